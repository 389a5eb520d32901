"""The chunked LM loss (flashcore.loss.linear_cross_entropy with each backend's chunk loop): its
value and its gradients with respect to the hidden states and the head's weights against a
NumPy float64 oracle of the plain loss (the softmax's closed-form gradient), in float64 and
float32, tied and untied heads, ignored positions, token counts that the chunk does not divide;
the head only ever sees one chunk of tokens; the plain path through the same oracle (so that the
oracle can fail); ``flashcore bench-loss`` at tiny sizes."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import flashcore as fc
from flashcore import loss as L
from flashcore.conformance.assertions import assert_close

BACKENDS = ("numpy", "torch", "jax", "tf")
V, D, B, T = 37, 16, 2, 11  # 22 tokens: chunks of 4 leave 2 over
HEADS = {
    "tied": dict(tie_embeddings=True, head_bias=False),
    "untied+bias": dict(tie_embeddings=False, head_bias=True),
}


def _config(head: str) -> fc.LMConfig:
    block = fc.FlashConfig(dim=D, qk_dim=8, chunk_size=8, causal=True)
    return fc.LMConfig(block=block, vocab_size=V, num_layers=1, **HEADS[head])


def _case(head: str, masked: bool, seed: int = 0):
    """Head weights, hidden states (b, t, d), targets (b, t) and the counted positions, float64."""
    rng = np.random.default_rng(seed)
    config = _config(head)
    weights = {
        k: rng.normal(0.0, 1.0, v.shape)
        for k, v in L.head_weights(fc.init(config, seed, np.float64), config).items()
    }
    h = rng.normal(0.0, 1.0, (B, T, D))
    targets = rng.integers(0, V, (B, T))
    mask = rng.random((B, T)) > 0.3 if masked else None
    return config, weights, h, targets, mask


def _oracle(config, weights, h, targets, mask):
    """The plain loss and its gradients in float64, written out: z = h W (+ b); loss = sum_i w_i
    (logsumexp z_i - z_i[y_i]) / sum w; dz = w (softmax(z) - onehot(y)) / sum w."""
    kernel = weights["embed.weight"].T if config.tie_embeddings else weights["head.kernel"]
    hf = h.reshape(-1, D)
    z = hf @ kernel + weights.get("head.bias", 0.0)  # (n, v)
    w = np.ones(len(hf)) if mask is None else mask.reshape(-1).astype(np.float64)
    zmax = z.max(-1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(-1)) + zmax[:, 0]
    y = targets.reshape(-1)
    nll = lse - z[np.arange(len(y)), y]
    count = max(w.sum(), 1.0)
    dz = np.exp(z - lse[:, None])
    dz[np.arange(len(y)), y] -= 1.0
    dz *= (w / count)[:, None]
    grads = {"h": (dz @ kernel.T).reshape(h.shape)}
    if config.tie_embeddings:
        grads["embed.weight"] = (hf.T @ dz).T
    else:
        grads["head.kernel"] = hf.T @ dz
    if config.head_bias:
        grads["head.bias"] = dz.sum(0)
    return float((nll * w).sum() / count), grads


def _need(backend: str):
    module = {"tf": "tensorflow"}.get(backend, backend)
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _run(backend, dtype, config, weights, h, targets, mask, *, chunked=True, chunk=4):
    """(loss, {'h': ..., name: ...}) as NumPy float64 from ``backend`` in ``dtype``: the chunked
    loss through the backend's core, or (chunked=False) the plain cross_entropy on full logits."""
    _need(backend)

    def loss_fn(xp, ws, hh, tt, mm, core):
        if chunked:
            return L.linear_cross_entropy(
                ws, hh, tt, mm, config=config, xp=xp, core=core, chunk=chunk
            )
        return L.cross_entropy(fc.lm.head(ws, hh, config, xp), tt, mm, xp=xp)

    if backend == "torch":
        import torch

        from flashcore.torch.loss import chunked_loss
        from flashcore.torch.xp import xp

        dt = getattr(torch, dtype)
        ws = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in weights.items()}
        hh = torch.tensor(h, dtype=dt, requires_grad=True)
        mm = None if mask is None else torch.tensor(mask)
        loss = loss_fn(xp, ws, hh, torch.tensor(targets), mm, chunked_loss)
        loss.backward()
        grads = {"h": hh.grad, **{k: v.grad for k, v in ws.items()}}
        return float(loss.detach()), {k: v.double().numpy() for k, v in grads.items()}
    if backend == "jax":
        import jax

        from flashcore.jax.loss import chunked_loss
        from flashcore.jax.xp import xp

        with jax.enable_x64(dtype == "float64"):
            jax.clear_caches()
            import jax.numpy as jnp

            ws = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
            mm = None if mask is None else jnp.asarray(mask)
            tt = jnp.asarray(targets)

            def f(ws, hh):
                return loss_fn(xp, ws, hh, tt, mm, chunked_loss)

            loss, (gw, gh) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
                ws, jnp.asarray(h, dtype)
            )
            grads = {"h": gh, **gw}
            return float(loss), {k: np.asarray(v, np.float64) for k, v in grads.items()}
    if backend == "tf":
        import tensorflow as tf

        from flashcore.tf.loss import chunked_loss
        from flashcore.tf.xp import xp

        ws = {k: tf.constant(v, dtype) for k, v in weights.items()}
        hh = tf.constant(h, dtype)
        mm = None if mask is None else tf.constant(mask)

        @tf.function(jit_compile=True, autograph=False)
        def step(ws, hh):
            with tf.GradientTape() as tape:
                tape.watch([hh, ws])
                loss = loss_fn(xp, ws, hh, tf.constant(targets), mm, chunked_loss)
            return loss, tape.gradient(loss, [hh, ws])

        loss, (gh, gw) = step(ws, hh)
        grads = {"h": gh, **gw}
        return float(loss), {k: tf.cast(v, tf.float64).numpy() for k, v in grads.items()}
    raise AssertionError(backend)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "plain"])
def test_loss_and_gradients_equal_the_oracle(backend, head, dtype, chunked):
    """The chunked loss (chunks of 4 over 22 tokens, 30% ignored) and the plain one, value and
    gradients (hidden states, head weights), to the conformance table's row of the dtype."""
    config, weights, h, targets, mask = _case(head, masked=True)
    want, want_grads = _oracle(config, weights, h, targets, mask)
    got, grads = _run(backend, dtype, config, weights, h, targets, mask, chunked=chunked)
    assert_close(np.float64(got), np.float64(want), quantity="loss", dtype=dtype)
    assert set(grads) == set(want_grads)
    assert_close(grads["h"], want_grads["h"], quantity="grad_input", dtype=dtype)
    scale = max(np.abs(g).max() for k, g in want_grads.items() if k != "h")
    for k in want_grads.keys() - {"h"}:
        assert_close(
            grads[k], want_grads[k], quantity="grad_params", dtype=dtype, scale=scale, err_msg=k
        )


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
@pytest.mark.parametrize("chunk", [1, 5, 22, 1000])
def test_every_chunk_size_and_no_mask(backend, chunk):
    """No mask (every token counted) and chunks of 1 token, a ragged 5, exactly n and more than
    n: the same value and gradients (float64)."""
    config, weights, h, targets, mask = _case("untied+bias", masked=False, seed=1)
    want, want_grads = _oracle(config, weights, h, targets, mask)
    got, grads = _run(backend, "float64", config, weights, h, targets, mask, chunk=chunk)
    assert_close(np.float64(got), np.float64(want), quantity="loss", dtype="float64")
    for k in want_grads:
        assert_close(grads[k], want_grads[k], quantity="grad_params", dtype="float64", err_msg=k)


def test_numpy_spec_loop_equals_the_oracle():
    """The spec's own chunk loop (no core) on NumPy float64, every chunk size."""
    config, weights, h, targets, mask = _case("tied", masked=True)
    want, _ = _oracle(config, weights, h, targets, mask)
    for chunk in (1, 3, 22, 64, None):
        got = L.linear_cross_entropy(weights, h, targets, mask, config=config, chunk=chunk)
        assert_close(np.float64(got), np.float64(want), quantity="loss", dtype="float64")
    plain = L.cross_entropy(fc.lm.head(weights, h, config, np), targets, mask)
    assert_close(np.float64(plain), np.float64(want), quantity="loss", dtype="float64")


def test_the_oracle_catches_a_wrong_target():
    """The comparison can fail: one target moved by one id changes the loss beyond the row."""
    config, weights, h, targets, mask = _case("tied", masked=False)
    want, _ = _oracle(config, weights, h, targets, mask)
    moved = targets.copy()
    moved[0, 0] = (moved[0, 0] + 1) % V
    got = L.linear_cross_entropy(weights, h, moved, mask, config=config, chunk=4)
    with pytest.raises(AssertionError):
        assert_close(np.float64(got), np.float64(want), quantity="loss", dtype="float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_head_only_sees_chunks(backend, monkeypatch):
    """Through ``flashcore.lm_loss`` (the LM's training and eval loss) the head is called on at
    most ``chunk`` tokens at a time, never on (b, t, d): the (b, t, v) logits are never built."""
    _need(backend)
    config = _config("tied")
    params = fc.init(config, 0, np.float64)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, V, (2, 40)), rng.integers(0, V, (2, 40))
    chunk = L.chunk_tokens(V, elements=V * 16)  # 16 tokens of 80
    monkeypatch.setattr(L, "chunk_tokens", lambda v: chunk)
    seen = []
    real_head = L.head  # the head the chunked loss calls (flashcore.loss.head)

    def spy(params, h, config, xp):
        seen.append(tuple(h.shape))
        return real_head(params, h, config, xp)

    monkeypatch.setattr(L, "head", spy)
    if backend == "numpy":
        fc.lm_loss(params, tokens, targets, config=config)
    elif backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, seed=0)
        lm.loss(torch.tensor(tokens), torch.tensor(targets)).backward()
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        from flashcore.jax import functional

        p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
        jax.grad(
            lambda p: functional.loss(p, jnp.asarray(tokens), jnp.asarray(targets), config=config)
        )(p)
    else:
        import tensorflow as tf

        from flashcore.tf import LM

        lm = LM(config, params={k: v.astype(np.float32) for k, v in params.items()})
        with tf.GradientTape() as tape:
            loss = lm.loss(tf.constant(tokens), tf.constant(targets))
        tape.gradient(loss, lm.trainable_variables)
    assert seen, "the head was never called"
    assert all(len(s) == 2 and s[0] <= chunk for s in seen), seen


def test_torch_saves_nothing_of_the_full_logits_size(monkeypatch):
    """torch: no tensor autograd saves during the LM loss's forward (the chunk's own graph
    included) reaches the size of the (b, t, v) logits."""
    _need("torch")
    import torch

    from flashcore.torch import LM

    config = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=8), vocab_size=512)
    lm = LM(config, seed=0)
    tokens = torch.randint(0, 512, (2, 64))
    monkeypatch.setattr(L, "chunk_tokens", lambda v: 16)  # 8 chunks
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = lm.loss(tokens, tokens)
    loss.backward()
    full = 2 * 64 * 512
    assert sizes and max(sizes) < full, (max(sizes), full)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the plain path does
        lm.cross_entropy(lm(tokens), tokens)
    assert max(sizes) >= full


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_loss_without_gradients_is_the_same(backend):
    """Evaluation's path (torch.no_grad; tf ``grad=False``) gives the differentiable path's value
    (float64: the same sums, so to the reorder bound)."""
    _need(backend)
    config = _config("untied+bias")
    params = fc.init(config, 0, np.float64)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, V, (2, 19)), rng.integers(0, V, (2, 19))
    mask = rng.random((2, 19)) > 0.2
    if backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, init=False, dtype=torch.float64)
        lm.load_canonical(params)
        args = (torch.tensor(tokens), torch.tensor(targets), torch.tensor(mask))
        with_grad = lm.loss(*args)
        with torch.no_grad():
            without = lm.loss(*args)
        assert not without.requires_grad
    else:
        import tensorflow as tf

        from flashcore.tf import LM

        lm = LM(config, params=params, dtype="float64")
        args = (tf.constant(tokens), tf.constant(targets), tf.constant(mask))
        with_grad, without = lm.loss(*args), lm.loss(*args, grad=False)
    want = fc.lm_loss(params, tokens, targets, config=config, mask=mask)
    for got in (with_grad, without):
        got = float(got.detach()) if hasattr(got, "detach") else float(got)
        assert_close(np.float64(got), np.float64(want), reorder=V, dtype="float64")


def _bench(tmp_path, backends: str) -> list[dict]:
    from flashcore.app import loss_bench

    out = tmp_path / "loss.json"
    argv = ["--backends", backends, "--vocab", "64", "--tokens", "96", "--dim", "16"]
    assert loss_bench.main([*argv, "--repeats", "2", "--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


def test_bench_loss_smoke(tmp_path):
    """``python -m flashcore.app.loss_bench`` at tiny sizes (torch: each row is a child process
    that imports its framework): the chunked and plain rows, peak memory and time, as JSON."""
    _need("torch")
    rows = _bench(tmp_path, "torch")
    assert [(r["backend"], r["path"], r["status"]) for r in rows] == [
        ("torch", "chunked", "ok"),
        ("torch", "plain", "ok"),
    ]
    for r in rows:
        assert r["peak_mib"] >= 0 and r["median_s"] > 0 and r["finite"], r
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)  # float32, one loss


@pytest.mark.slow
def test_bench_loss_every_backend(tmp_path):
    """The same in torch, jax and tf (six child processes)."""
    rows = _bench(tmp_path, "torch,jax,tf")
    backends = {r["backend"] for r in rows}
    assert backends, rows
    for r in rows:
        assert r["status"] == "ok", r
        assert r["peak_mib"] >= 0 and r["median_s"] > 0, r
    assert {(b, p) for b in backends for p in ("chunked", "plain")} == {
        (r["backend"], r["path"]) for r in rows
    }


def test_bad_input_is_refused():
    """A chunk below 1, hidden states that do not match the targets, a target out of the
    vocabulary, and more logits than int32 indices reach: clear errors."""
    config, weights, h, targets, mask = _case("tied", masked=True)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        L.linear_cross_entropy(weights, h, targets, mask, config=config, chunk=0)
    with pytest.raises(ValueError, match=r"must be \(batch, time, d\)"):
        L.linear_cross_entropy(weights, h[:, :-1], targets, mask, config=config)
    with pytest.raises(ValueError, match="token ids must be in"):
        L.linear_cross_entropy(weights, h, targets + V, mask, config=config)
    huge = np.broadcast_to(np.zeros((1, 1), np.float32), (2**16, 2**15))  # 2^31 entries, a view
    with pytest.raises(ValueError, match="int32 indices"):
        L.token_nll(huge, np.zeros(2**16, np.int32), np)
