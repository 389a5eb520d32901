"""flash-pytorch 0.1.9 checkpoints load into flashcore and compute the same outputs, in the spec and
in every installed backend (float64 <= 1e-9 where the backend runs float64, float32 <= 1e-5)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="flash-pytorch parity needs torch")
flash_pytorch = pytest.importorskip(
    "flash_pytorch", reason="flash-pytorch 0.1.9 is a test dependency"
)
from rotary_embedding_torch import RotaryEmbedding  # noqa: E402

from flashcore.conformance.adapters import load_adapter  # noqa: E402
from flashcore.conformance.golden import spec_output  # noqa: E402
from flashcore.peers.flash_pytorch import import_state_dict  # noqa: E402

D, S, G, T = 16, 40, 8, 19  # S = 40: rotary covers the first 32 of 40 dims; T % G != 0
BACKENDS = ["torch", "jax", "tf"]
WHERE = ["spec", *BACKENDS]  # the spec, then each backend (a named skip when not installed)
# (where, causal, norm, masked): every option on the spec; the backends (which the conformance
# suite holds to the spec in every feature) on the masked cases only, to keep the suite quick
LAYER_CASES = [
    (w, c, n, m)
    for w in WHERE
    for c in (False, True)
    for n in ("scalenorm", "layernorm")
    for m in (False, True)
    if w == "spec" or m
]


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rotary_pos_emb.freqs"):
                continue
            p.add_(
                torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 if "gamma" in name else 0.3)
            )
    return module


def _exact_constants(module):
    """The peer computes rotary and sinusoid frequencies in float32; give it the float64 values the
    formulas define, so that a float64 comparison measures the layers, not that rounding."""
    with torch.no_grad():
        for name, p in itertools.chain(module.named_parameters(), module.named_buffers()):
            if name.endswith("rotary_pos_emb.freqs") or name.endswith("abs_pos_emb.inv_freq"):
                n = 2 * p.shape[0]
                p.copy_(1.0 / 10000.0 ** (torch.arange(0, n, 2, dtype=torch.float64) / n))
    return module


def _peer_output(module, x_or_tokens, mask):
    with torch.no_grad():
        out = module(
            torch.as_tensor(x_or_tokens), mask=None if mask is None else torch.as_tensor(mask)
        )
    return out.double().numpy()


def _compare(where, cfg, params, inputs, ref, mask):
    """The spec (``where="spec"``) or one backend against the peer's output ``ref`` at real
    positions; a backend that is not installed is a named skip."""
    real = np.ones(ref.shape[:2], bool) if mask is None else mask
    if where == "spec":
        got = spec_output(cfg, params, inputs)
        assert np.abs(got - ref)[real].max() <= 1e-9
        return
    adapter, reason = load_adapter(where)
    if adapter is None:
        pytest.skip(f"backend {where} {reason}")
    checked = [dt for dt in ("float64", "float32") if dt in adapter.dtypes]
    assert checked, f"{where} runs neither float64 nor float32: {adapter.dtypes}"
    for dtype in checked:
        tol = {"float64": 1e-9, "float32": 1e-5}[dtype]
        with adapter.strict_precision():
            out = adapter.output(cfg, params, inputs, dtype)
        err = np.abs(out - ref)[real].max() / max(1.0, np.abs(ref[real]).max())
        assert err <= tol, f"{where} {dtype}: {err:.3g}"


def _inputs(kind, masked, seed=0):
    rng = np.random.default_rng(seed)
    mask = None
    if masked:
        mask = np.ones((2, T), bool)
        mask[0, 12:] = False  # right padding, as the peer's masks are used
    if kind == "lm":
        tokens = rng.integers(0, 23, (2, T))
        return (
            {"tokens": tokens, "targets": tokens, **({"mask": mask} if masked else {})},
            tokens,
            mask,
        )
    x = rng.normal(size=(2, T, D))
    return {"x": x, "cotangent": x, **({"mask": mask} if masked else {})}, x, mask


def _flash_layer_case(causal, norm, shift, rotary, masked):
    """(config, params, inputs, the peer's output, mask) of one randomized peer FLASH layer."""
    norm_klass = (
        flash_pytorch.flash_pytorch.ScaleNorm if norm == "scalenorm" else torch.nn.LayerNorm
    )
    peer = flash_pytorch.FLASH(
        dim=D, group_size=G, query_key_dim=S, causal=causal, norm_klass=norm_klass,
        shift_tokens=shift, rotary_pos_emb=RotaryEmbedding(dim=min(32, S)) if rotary else None,
    ).double()  # fmt: skip
    _exact_constants(_randomize(peer, 1))
    params, cfg = import_state_dict(
        peer.state_dict(), "FLASH", causal=causal, group_size=G, shift_tokens=shift
    )
    assert cfg.rope == ("interleaved" if rotary else "none") and cfg.token_shift == shift
    inputs, x, mask = _inputs("layer", masked)
    return cfg, params, inputs, _peer_output(peer, x, mask), mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("norm", ["scalenorm", "layernorm"])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_flash_layer(causal, norm, shift, rotary, masked):
    _compare("spec", *_flash_layer_case(causal, norm, shift, rotary, masked))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("norm", ["scalenorm", "layernorm"])
def test_flash_layer_in_backend(backend, causal, norm):
    # every combination runs against the spec above; the backends (which the conformance suite
    # already holds to the spec) with every option (padding too) switched on, to keep the suite quick
    _compare(backend, *_flash_layer_case(causal, norm, True, True, True))


@pytest.mark.parametrize(("where", "causal", "norm", "masked"), LAYER_CASES)
def test_gau_layer(where, causal, norm, masked):
    norm_klass = (
        flash_pytorch.flash_pytorch.ScaleNorm if norm == "scalenorm" else torch.nn.LayerNorm
    )
    peer = flash_pytorch.GAU(dim=D, query_key_dim=S, causal=causal, norm_klass=norm_klass).double()
    _randomize(peer, 2)
    params, cfg = import_state_dict(peer.state_dict(), "GAU", causal=causal)
    inputs, x, mask = _inputs("layer", masked)
    _compare(where, cfg, params, inputs, _peer_output(peer, x, mask), mask)


@pytest.mark.parametrize(("where", "causal", "norm", "masked"), LAYER_CASES)
def test_flash_transformer(where, causal, norm, masked):
    peer = flash_pytorch.FLASHTransformer(
        dim=D, num_tokens=23, depth=2, group_size=G, query_key_dim=S, causal=causal, norm_type=norm
    ).double()
    _exact_constants(_randomize(peer, 3))
    params, cfg = import_state_dict(
        peer.state_dict(), "FLASHTransformer", causal=causal, group_size=G
    )
    assert cfg.block.rope_dims == 32 and cfg.block.token_shift
    inputs, tokens, mask = _inputs("lm", masked)
    _compare(where, cfg, params, inputs, _peer_output(peer, tokens, mask), mask)


@pytest.mark.parametrize("where", WHERE)
def test_laplace_attention_function(where):
    peer = flash_pytorch.FLASH(
        dim=D, group_size=G, query_key_dim=S, causal=True, laplace_attn_fn=True
    ).double()
    _randomize(peer, 4)
    params, cfg = import_state_dict(
        peer.state_dict(), "FLASH", causal=True, group_size=G, laplace_attn_fn=True
    )
    inputs, x, mask = _inputs("layer", False)
    _compare(where, cfg, params, inputs, _peer_output(peer, x, mask), mask)


def test_float32_checkpoint_matches_in_float32():
    """Without the float64 constants fix-up: a plain float32 peer module, as users have them."""
    peer = flash_pytorch.FLASHTransformer(
        dim=D, num_tokens=23, depth=2, group_size=G, query_key_dim=S, causal=True
    )
    _randomize(peer, 5)
    params, cfg = import_state_dict(
        peer.state_dict(), "FLASHTransformer", causal=True, group_size=G
    )
    _, tokens, _ = _inputs("lm", False)
    ref = _peer_output(peer, tokens, None)
    got = spec_output(cfg, {k: v.astype(np.float32) for k, v in params.items()}, {"tokens": tokens})
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5


def test_importer_rejects_unknown_and_missing_tensors():
    peer = flash_pytorch.FLASH(dim=D, group_size=G, query_key_dim=S, causal=True)
    sd = dict(peer.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not know: \\['extra.weight'\\]"):
        import_state_dict(sd, "FLASH", causal=True, group_size=G)
    sd = dict(peer.state_dict())
    del sd["to_qk.0.bias"]
    with pytest.raises(ValueError, match="no 'to_qk.0.bias'"):
        import_state_dict(sd, "FLASH", causal=True, group_size=G)
    with pytest.raises(ValueError, match="no flashcore equivalent"):
        import_state_dict(
            peer.state_dict(), "FLASH", causal=False, reduce_group_non_causal_attn=False
        )
    assert math.isclose(
        import_state_dict(peer.state_dict(), "FLASH", causal=True)[1].bias_scale, math.sqrt(S)
    )
