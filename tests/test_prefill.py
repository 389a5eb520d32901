"""Streamed prefill (flashcore.stream.lm_prefill and every backend's LM.prefill) equals the full
forward at several piece sizes, T not a multiple of the piece or of C; its state continues in
lm_decode_step and in a second prefill; bad input gets a clear error. float64 everywhere."""

from __future__ import annotations

import contextlib

import array_api_compat.numpy as xnp
import numpy as np
import pytest

import flashcore as fc
from flashcore import decode, stream
from flashcore.conformance.assertions import assert_close, to_numpy
from flashcore.conformance.tolerances import longest_reduction

BACKENDS = ["spec", "torch", "jax", "tf"]
T = 23  # C = 4: five whole chunks and 3 positions, not a multiple of any piece below


def _cfg(**block):
    blk = dict(dim=16, qk_dim=8, chunk_size=4, causal=True, token_shift=True, rel_bias="t5")
    blk.update(block)
    return fc.LMConfig(
        block=fc.FlashConfig(**blk), vocab_size=13, num_layers=2, abs_pos="scaled_sinusoidal"
    )


CONFIGS = {"sum": _cfg(), "mean-learned": _cfg(linear_norm="mean", rel_bias="learned")}


def _params(cfg, seed=0):
    r = np.random.default_rng(seed)
    return {k: v + r.normal(0, 0.3, v.shape) for k, v in fc.init(cfg, seed, np.float64).items()}


class _Backend:
    """prefill(tokens, piece, state, last_only) and step(tokens_t, state) on one backend."""

    def __init__(self, name: str, cfg, params):
        self.name, self.cfg, self.params = name, cfg, params
        self.ctx = contextlib.nullcontext()
        if name == "torch":
            torch = pytest.importorskip("torch", reason="the torch backend needs torch")
            from flashcore.torch import LM

            self.lm = LM(cfg, init=False, dtype=torch.float64)
            self.lm.load_canonical(params)
            self.tokens = lambda a: torch.as_tensor(a)
        elif name == "jax":
            jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
            from _jax64 import x64

            self.ctx = x64(True)
            self.tokens = lambda a: jax.numpy.asarray(a, jax.numpy.int32)
        elif name == "tf":
            tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
            from flashcore.tf import LM

            self.lm = LM(cfg, params=params, dtype="float64")
            self.tokens = lambda a: tf.constant(a, tf.int32)
        else:
            self.tokens = np.asarray

    def prefill(self, tokens, piece, state=None, last_only=False):
        tok = self.tokens(tokens)
        if self.name == "spec":
            return stream.lm_prefill(
                self.params, tok, config=self.cfg, piece=piece, state=state,
                last_only=last_only, xp=xnp,
            )  # fmt: skip
        if self.name == "jax":
            from flashcore.jax import decode as jdecode

            p = {k: _jnp(v) for k, v in self.params.items()}
            return jdecode.prefill(
                p, tok, config=self.cfg, piece=piece, state=state, last_only=last_only
            )
        return self.lm.prefill(tok, piece=piece, state=state, last_only=last_only)

    def step(self, token_t, state):
        tok = self.tokens(token_t)
        if self.name == "spec":
            return decode.lm_decode_step(self.params, tok, state, config=self.cfg, xp=xnp)
        if self.name == "jax":
            from flashcore.jax import decode as jdecode

            p = {k: _jnp(v) for k, v in self.params.items()}
            return jdecode.decode_step(p, tok, state, config=self.cfg)
        return self.lm.decode_step(tok, state)

    def init(self, capacity):
        """An empty decoding state of 2 rows (a key/value cache of ``capacity`` positions)."""
        if self.name == "spec":
            return decode.lm_decode_init(self.cfg, 2, capacity=capacity, xp=xnp, dtype=np.float64)
        if self.name == "jax":
            import jax.numpy as jnp

            from flashcore.jax import decode as jdecode

            return jdecode.decode_init(self.cfg, 2, jnp.float64, capacity=capacity)
        return self.lm.decode_init(2, capacity)


def _jnp(a):
    import jax.numpy as jnp

    return jnp.asarray(a)


def _tokens(b=2, t=T + 2, seed=1):
    return np.random.default_rng(seed).integers(0, 13, (b, t))


def _check(got, want, cfg, what):
    assert_close(to_numpy(got), want, reorder=longest_reduction(cfg, T), err_msg=what)


# The compiled backends (jax, tf: each piece length is a compilation of the whole LM, 10-30 s on
# 2 cores) run the first config at two piece sizes; the spec and torch run every config and size.
CASES = [
    (backend, config)
    for backend in BACKENDS
    for config in CONFIGS
    if backend in ("spec", "torch") or config == next(iter(CONFIGS))
]


@pytest.mark.parametrize("backend, config", CASES)
def test_prefill_equals_the_full_forward(backend, config):
    cfg = CONFIGS[config]
    p = _params(cfg)
    tokens = _tokens()[:, :T]
    want = np.asarray(fc.lm_logits(p, tokens, config=cfg, xp=xnp))  # (b, T, v)
    be = _Backend(backend, cfg, p)
    with be.ctx:
        # one chunk, two, three, longer than the sequence; compiled backends (each piece length
        # is a compilation) take two that need no other: 8 runs pieces 8, 8, 4 and 3 steps, 4
        # runs five pieces of 4 and 3 steps (last_only at 8 only)
        pieces = (4, 8, 12, 32) if backend in ("spec", "torch") else (8, 4)
        for piece in pieces:
            logits, state = be.prefill(tokens, piece)
            assert tuple(logits.shape) == want.shape
            _check(logits, want, cfg, f"{backend} piece={piece}")
            assert int(to_numpy(state["layers.1"]["pos"])) == T
            if backend in ("jax", "tf") and piece != pieces[0]:
                continue
            last, _ = be.prefill(tokens, piece, last_only=True)
            assert tuple(last.shape) == (2, cfg.vocab_size)
            _check(last, want[:, -1], cfg, f"{backend} piece={piece} last_only")


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_state_continues_in_decode_and_in_prefill(backend):
    cfg = CONFIGS["sum"]
    p = _params(cfg, seed=2)
    tokens = _tokens()  # (2, T + 2)
    want = np.asarray(fc.lm_logits(p, tokens, config=cfg, xp=xnp))
    be = _Backend(backend, cfg, p)
    with be.ctx:
        _, state = be.prefill(tokens[:, :T], 8, last_only=True)
        for i in (T, T + 1):  # mid-chunk, then onto a chunk boundary
            logits, state = be.step(tokens[:, i], state)
            _check(logits, want[:, i], cfg, f"{backend} decode at {i}")
        # a state that stops mid-chunk (10 = 2 C + 2) streams on through a second prefill
        _, state = be.prefill(tokens[:, :10], 8, last_only=True)
        rest, state = be.prefill(tokens[:, 10:], 8, state=state)
        _check(rest, want[:, 10:], cfg, f"{backend} second prefill")
        assert int(to_numpy(state["layers.0"]["pos"])) == T + 2


def test_prefill_without_token_shift_or_abs_pos_and_the_nonfinite_rule():
    cfg = fc.LMConfig(
        block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True),
        vocab_size=13,
        tie_embeddings=False,  # a NaN embedding row must not reach the head's weights
    )
    p = _params(cfg)
    tokens = _tokens()[:, :T]
    want = fc.lm_logits(p, tokens, config=cfg, xp=xnp)
    got, _ = stream.lm_prefill(p, tokens, config=cfg, piece=8, xp=xnp)
    _check(got, want, cfg, "plain")
    # A NaN embedding row at position 5 of row 0 reaches every later position of row 0 only,
    # across pieces, as in the forward.
    tokens = tokens % 12
    tokens[0, 5] = 12
    p["embed.weight"] = p["embed.weight"].copy()
    p["embed.weight"][12] = np.nan
    want = fc.lm_logits(p, tokens, config=cfg, xp=xnp)
    got, state = stream.lm_prefill(p, tokens, config=cfg, piece=8, xp=xnp)
    np.testing.assert_array_equal(np.isnan(got).all(-1), np.isnan(want).all(-1))
    ok = slice(0, 12)  # the tied head's column 12 reads the NaN row of the embedding
    assert np.isnan(got[0, 5:]).all() and np.isfinite(got[0, :5, ok]).all()
    assert np.isfinite(got[1, :, ok]).all()
    _check(got[1, :, ok], want[1, :, ok], cfg, "the clean row")
    nxt, _ = decode.lm_decode_step(p, np.array([1, 1]), state, config=cfg, xp=xnp)
    assert np.isnan(nxt[0]).all() and np.isfinite(nxt[1, ok]).all()


def _run(cfg, piece=4, tokens=None):
    p = fc.init(cfg, 0, np.float64)
    tokens = _tokens()[:, :8] if tokens is None else tokens
    return stream.lm_prefill(p, tokens, config=cfg, piece=piece, xp=xnp)


CACHE_CONFIGS = {
    "gau-prefix": _cfg(kind="gau", length_mode="prefix"),
    "transformer": fc.LMConfig(
        block=fc.TransformerConfig(dim=16, heads=2), vocab_size=13, num_layers=2
    ),
}


@pytest.mark.parametrize(
    "backend, config",
    [
        pytest.param(b, c, marks=[] if b in ("spec", "torch") else [pytest.mark.slow])
        for b in BACKENDS
        for c in CACHE_CONFIGS
        if b in ("spec", "torch") or c == "gau-prefix"
    ],
)
def test_prefill_of_a_key_value_cache_equals_the_full_forward_and_decodes_on(backend, config):
    """GAU (length_mode='prefix') and Transformer++ LMs stream through their cores' key/value
    caches at any piece size (T not a multiple of it); the state continues in decode_step."""
    cfg = CACHE_CONFIGS[config]
    p = _params(cfg, seed=3)
    tokens = _tokens()  # (2, T + 2)
    want = np.asarray(fc.lm_logits(p, tokens, config=cfg, xp=xnp))
    be = _Backend(backend, cfg, p)
    n = T if backend in ("spec", "torch") else T + 1  # compiled: 3 pieces of 8, one compilation
    with be.ctx:
        for piece in (5, 8, 32) if backend in ("spec", "torch") else (8,):
            logits, state = be.prefill(tokens[:, :n], piece, state=be.init(32))
            _check(logits, want[:, :n], cfg, f"{backend} piece={piece}")
        for i in range(n, T + 2):
            logits, state = be.step(tokens[:, i], state)
            _check(logits, want[:, i], cfg, f"{backend} decode at {i}")


@pytest.mark.parametrize(
    "cfg, match",
    [
        (_cfg(kind="gau"), "gau layers with length_mode='real'.*lm_logits.*'prefix'"),
        (_cfg(causal=False), "causal=True"),
    ],
    ids=["gau-growing-n", "bidirectional"],
)
def test_prefill_refuses_what_has_no_carried_state(cfg, match):
    with pytest.raises(ValueError, match=match):
        _run(cfg)


@pytest.mark.parametrize("piece", [6, 0, -4, True, 4.0])
def test_prefill_piece_must_be_a_positive_multiple_of_the_chunk(piece):
    with pytest.raises(ValueError, match="piece"):
        _run(_cfg(), piece=piece)


def test_prefill_bad_tokens_and_config_type():
    with pytest.raises(ValueError, match="token ids"):
        _run(_cfg(), tokens=np.full((2, 8), 13))
    with pytest.raises(ValueError, match="shape"):
        _run(_cfg(), tokens=np.zeros((8,), np.int64))
    with pytest.raises(TypeError, match="LMConfig"):
        stream.lm_prefill({}, np.zeros((1, 4), np.int64), config=_cfg().block, piece=4, xp=xnp)
