"""Shared test cases for every backend's tests: tiny configs (each test takes seconds), noisy
canonical weights, NumPy inputs and a relative error. Framework-free; each backend's tests add
their own tensor helpers (``backend_torch/_torch_cases.py``)."""

from __future__ import annotations

import numpy as np

import flashcore as fc


def flash_cfg(**kw) -> fc.FlashConfig:
    """A tiny FLASH / GAU config (dim 16, qk 8, chunk 4) with ``kw`` changed."""
    base = dict(dim=16, qk_dim=8, chunk_size=4, max_len=32, t5_buckets=8, t5_max_distance=16)
    return fc.FlashConfig(**{**base, **kw})


# One config per module type and option family; ids name what they vary.
LAYER_CONFIGS = {
    "flash": flash_cfg(),
    "flash-causal-t5-layer-shift": flash_cfg(
        causal=True, rel_bias="t5", norm="layer", token_shift=True
    ),
    "flash-rms-nobias": flash_cfg(norm="rms", rel_bias="none"),
    "gau": flash_cfg(kind="gau"),
    "gau-causal-laplace": flash_cfg(kind="gau", causal=True, attention="laplace"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
    "transformer-scale": fc.TransformerConfig(dim=16, heads=4, norm="scale", causal=False),
}

LM_CONFIGS = {
    "lm-flash": fc.LMConfig(block=flash_cfg(causal=True), vocab_size=11, num_layers=2),
    "lm-gau-untied": fc.LMConfig(
        block=flash_cfg(kind="gau", causal=True), vocab_size=11, tie_embeddings=False
    ),
    "lm-transformer-headbias": fc.LMConfig(
        block=fc.TransformerConfig(dim=16, heads=2), vocab_size=11, head_bias=True
    ),
    "lm-flash-bidir": fc.LMConfig(block=flash_cfg(), vocab_size=11),
    "lm-flash-abspos": fc.LMConfig(
        block=flash_cfg(causal=True, norm="layer"),
        vocab_size=11,
        abs_pos="scaled_sinusoidal",
        final_norm="rms",
        tie_embeddings=False,
        head_bias=True,
    ),
}

ALL_CONFIGS = {**LAYER_CONFIGS, **LM_CONFIGS}


def noisy_params(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical float64 weights: the initializer plus noise, so that every term matters."""
    rng = np.random.default_rng(seed + 1)
    return {
        k: v + rng.normal(0.0, 0.3, v.shape) for k, v in fc.init(config, seed, np.float64).items()
    }


def inputs_for(config, b: int = 2, t: int = 9, seed: int = 0, mask: bool = True) -> dict:
    """x (b, t, d) float32 (or tokens / targets (b, t) int32) and a (b, t) mask that pads the
    last 3 positions of row 0, as NumPy."""
    rng = np.random.default_rng(seed)
    out = {}
    if isinstance(config, fc.LMConfig):
        out["tokens"] = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32)
        out["targets"] = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32)
    else:
        out["x"] = rng.normal(size=(b, t, config.dim)).astype(np.float32)
    if mask:
        m = np.ones((b, t), bool)
        m[0, t - 3 :] = False
        out["mask"] = m
    return out


def rel_err(got, expected) -> float:
    """max |got - expected| / max |expected| (float64)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


# -- attention-core inputs (the fused softmax cores' tests) -------------------------------------

#: batch, heads, positions, head width of :func:`softmax_core_inputs`
SOFTMAX_SHAPE = (2, 2, 13, 8)


def softmax_core_inputs(kind: str):
    """q, k, v (b, n, t, hd) float64 NumPy and mask, segment_ids (b, t) or None, for kind
    "plain", "padding" (row 0 right-padded, row 1 left-padded: a causal query with no real key)
    or "segments" (row 0 two segments)."""
    b, n, t, hd = SOFTMAX_SHAPE
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((b, n, t, hd)) for _ in range(3))
    mask = seg = None
    if kind == "padding":
        mask = np.ones((b, t), bool)
        mask[0, 9:] = False
        mask[1, :2] = False
    if kind == "segments":
        seg = np.array([[0] * 5 + [1] * 8, [0] * 13], np.int32)
    return q, k, v, mask, seg


def run_in_threads(world: int, body, stack=np.stack) -> list:
    """``body(rank, all_gather)`` on ``world`` threads that meet in ``all_gather``: (...) ->
    (world, ...), stacked with ``stack`` (the arrays' library's). Returns the ``world`` results;
    an error in any thread is raised here (the others are released)."""
    import threading

    barrier, lock = threading.Barrier(world, timeout=120), threading.Lock()
    slots, outs, errors = {}, [None] * world, []

    def worker(r: int) -> None:
        calls = [0]

        def all_gather(a):  # (...) -> (world, ...)
            k = calls[0]
            calls[0] += 1
            with lock:
                slots[k, r] = a
            barrier.wait()
            out = stack([slots[k, q] for q in range(world)])
            barrier.wait()
            return out

        try:
            outs[r] = body(r, all_gather)
        except BaseException as err:  # noqa: BLE001 - raised below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return outs


def run_shards(params, x, config, world: int, *, mask=None, segment_ids=None, xp=None, numpy=None):
    """flashcore.context_parallel.flash_shard on ``world`` threads, each with its slice of x
    (b, T, d) (and of mask, segment_ids) -> the shards' outputs joined, (b, T, d) NumPy.
    ``numpy``: the backend's array -> NumPy (default: np.asarray)."""
    from flashcore.context_parallel import flash_shard

    t = x.shape[1] // world
    cut = lambda a, rows: None if a is None else a[:, rows]  # noqa: E731

    def body(r, all_gather):
        rows = slice(r * t, (r + 1) * t)
        opts = dict(mask=cut(mask, rows), segment_ids=cut(segment_ids, rows), xp=xp)
        out = flash_shard(params, x[:, rows], config=config, rank=r, world=world,
                          all_gather=all_gather, **opts)  # fmt: skip
        return (numpy or np.asarray)(out)

    stack = np.stack if xp is None else xp.stack
    return np.concatenate(run_in_threads(world, body, stack=stack), axis=1)
