"""One FLASH core with explicit state (:func:`flashcore.layers.flash_core`): a sequence split at
any position gives the same result as the whole, whether the split is made by streaming (the
carried state handed from piece to piece; a piece that starts mid-chunk completes the state's
partial chunk), by context parallelism (a shard's initial state is the gathered prefix of the
shards before it, at chunk boundaries) or by decoding (the state carried token by token: the
core at t = 1), in every backend (the spec on NumPy, torch, jax, tf; torch also through its
fused core). Context parallelism with packed segment ids has its own test. float64 (JAX:
float32)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import numpy as np
import pytest
from _cases import flash_cfg, noisy_params, run_shards

import flashcore as fc
from flashcore import ops
from flashcore.conformance.assertions import assert_close, to_numpy
from flashcore.conformance.tolerances import longest_reduction
from flashcore.decode import decode_init, decode_step
from flashcore.layers import flash_core

BACKENDS = ["spec", "torch", "torch-core", "jax", "tf"]
_NEEDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}
C, T = 4, 16  # four chunks


_JIT: dict = {}


class _Backend:
    """Arrays and the namespace of one backend, float64: its fast cores (flashcore.kernels) for
    torch-core, jax and tf, the spec's cores for torch."""

    def __init__(self, name: str):
        module = _NEEDS.get(name.split("-")[0])
        if module is not None and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
        self.name = name
        self.dtype = "float32" if name == "jax" else "float64"  # what assert_close judges in
        if name == "spec":
            import array_api_compat.numpy as xnp

            self.xp, self.arr = xnp, np.asarray
        elif name.startswith("torch"):
            import torch

            from flashcore.torch.xp import xp

            self.xp, self.arr = xp, torch.as_tensor
            if name == "torch":
                from flashcore.kernels import spec_cores

                self.xp = spec_cores(xp)
        elif name == "jax":
            import jax.numpy as jnp

            from flashcore.jax.xp import xp

            self.xp, self.arr = xp, jnp.asarray
        else:
            import tensorflow as tf

            from flashcore.tf.xp import xp

            self.xp, self.arr = xp, tf.constant

    def fn(self, f, **static):
        """f with the keywords ``static`` bound; under jax.jit in JAX (one compile per shape
        instead of one per eager op), cached per (f, static)."""
        bound = functools.partial(f, **static)
        if self.name != "jax":
            return bound
        import jax

        key = (f, tuple(sorted(static.items(), key=lambda kv: kv[0])))
        if key not in _JIT:
            _JIT[key] = jax.jit(bound)
        return _JIT[key]

    def context(self):
        """Where this backend computes (a hook for per-thread settings; none needed)."""
        return contextlib.nullcontext()

    def tensors(self, params, *arrays):
        """The backend's arrays: float64, but float32 in JAX (whose float64 mode empties the jit
        caches; eager float32 reuses what other tests compiled)."""
        cast = (
            (lambda a: a.astype(np.float32) if a.dtype == np.float64 else a)
            if (self.name == "jax")
            else (lambda a: a)
        )
        return {k: self.arr(cast(v)) for k, v in params.items()}, [
            None if a is None else self.arr(cast(np.asarray(a))) for a in arrays
        ]


def _grid(backends, names):
    """(backend, config name) pairs; JAX (eager, compiling every new op shape: ~10 s a case)
    takes only the first config, marked slow."""
    out = []
    for be in backends:
        for i, name in enumerate(names):
            if be != "jax":
                out.append(pytest.param(be, name, id=f"{be}-{name}"))
            elif i == 0:
                out.append(pytest.param(be, name, id=f"{be}-{name}", marks=pytest.mark.slow))
    return out


CONFIGS = {
    "sum": flash_cfg(causal=True, token_shift=True, rel_bias="t5"),
    "mean-learned": flash_cfg(causal=True, token_shift=True, linear_norm="mean"),
    "laplace-layer": flash_cfg(causal=True, attention="laplace", norm="layer", rope="interleaved"),
}


def _case(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return noisy_params(cfg, seed), rng.normal(size=(2, T, cfg.dim))


def _stream(be, params, x, cfg, cuts, mask=None, eager=False):
    """flash_core over the pieces x[:, cuts[i]:cuts[i+1]], the state carried between them
    (``eager``: never under jax.jit, for pieces that start mid-chunk)."""
    state = decode_init(cfg, x.shape[0], xp=be.xp, dtype=x.dtype)
    outs = []
    for i, j in zip(cuts[:-1], cuts[1:], strict=True):
        m = None if mask is None else mask[:, i:j]
        step = functools.partial(flash_core, config=cfg, xp=be.xp)
        if not eager:
            step = be.fn(flash_core, config=cfg, xp=be.xp)
        out, state = step(params, x[:, i:j], state, mask=m)
        outs.append(to_numpy(out))
    return np.concatenate(outs, axis=1), state


@pytest.mark.parametrize(("backend", "name"), _grid(BACKENDS, list(CONFIGS)))
def test_streaming_split_at_any_chunk_boundary_equals_the_whole(backend, name):
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg)
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
        for k in range(1, T // C) if be.name != "jax" else (2,):  # JAX: one cut, to compile less
            got, _ = _stream(be, p, xt, cfg, [0, k * C, T])
            assert_close(
                got, want, reorder=longest_reduction(cfg, T), dtype=be.dtype, err_msg=f"cut {k * C}"
            )
        got, _ = _stream(be, p, xt, cfg, list(range(0, T + 1, C)))  # every chunk a piece
        assert_close(
            got,
            want,
            reorder=longest_reduction(cfg, T),
            dtype=be.dtype,
            err_msg="one chunk a piece",
        )


@pytest.mark.parametrize(("backend", "name"), _grid(BACKENDS, ["mean-learned"]))
def test_streaming_with_padding_equals_the_whole(backend, name):
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=1)
    mask = np.random.default_rng(1).random((2, T)) > 0.3
    mask[0, C - 1] = False  # the row the token shift carries over the first cut is padding
    with be.context():
        p, (xt, mt) = be.tensors(params, x, mask)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt, mask=mt))
        got, _ = _stream(be, p, xt, cfg, [0, C, 3 * C, T], mask=mt)
    assert_close(got, want, reorder=longest_reduction(cfg, T), dtype=be.dtype)


@pytest.mark.parametrize(("backend", "name"), _grid(BACKENDS, ["sum", "mean-learned"]))
def test_decoding_after_a_streamed_prefix_equals_the_whole(backend, name):
    """A prefix of every length (spec; else a few), ending at a chunk boundary or mid-chunk, through
    flash_core, the rest token by token through decode_step, continuing the same state: every
    row equals the whole forward's."""
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=2)
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
        for cut in range(T) if be.name == "spec" else (0, C, C + 2, 2 * C - 1, 3 * C):
            got, state = _stream(be, p, xt, cfg, [0, cut]) if cut else (None, None)
            if state is None:
                state = decode_init(cfg, x.shape[0], xp=be.xp, dtype=xt.dtype)
            rows = [] if got is None else [got]
            for j in range(cut, T):
                out, state = be.fn(decode_step, config=cfg, xp=be.xp)(p, xt[:, j], state)
                rows.append(to_numpy(out)[:, None, :])
            got = np.concatenate(rows, axis=1)
            assert_close(
                got,
                want,
                reorder=longest_reduction(cfg, T),
                dtype=be.dtype,
                err_msg=f"prefix {cut}",
            )


def _assert_whole(got, want, cfg, be, msg):
    assert_close(got, want, reorder=longest_reduction(cfg, T), dtype=be.dtype, err_msg=msg)


def _splits(be):
    """Split points to try: every one for the spec and torch, a few mid-chunk ones for tf (eager
    ops) and jax (whose pieces starting mid-chunk run eagerly: under jax.jit the state's pos is
    traced, and a piece of t > 1 must then start at a chunk boundary)."""
    return {"jax": (C + 2,), "tf": (1, C + 2, 2 * C - 1)}.get(be.name, range(1, T))


@pytest.mark.parametrize(("backend", "name"), _grid(BACKENDS, ["sum", "laplace-layer"]))
def test_streaming_split_at_any_position_equals_the_whole(backend, name):
    """Two pieces cut at every position 1 .. T - 1 (JAX: a few), and pieces that stay inside a
    chunk, end at its boundary, run over several chunks, and one of a single position."""
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=5)
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
        for k in _splits(be):
            got, state = _stream(be, p, xt, cfg, [0, k, T], eager=True)
            _assert_whole(got, want, cfg, be, f"cut {k}")
            assert int(to_numpy(state["pos"])) == T
        if be.name != "jax":
            got, _ = _stream(be, p, xt, cfg, [0, 5, 7, 8, 13, 14, T])
            _assert_whole(got, want, cfg, be, "pieces 5, 7, 8, 13, 14")


@pytest.mark.parametrize(("backend", "name"), _grid(BACKENDS, ["mean-learned", "laplace-layer"]))
def test_streaming_after_decoding_at_any_position(backend, name):
    """Every split point k (JAX: two): the first k positions token by token (decode_step, the
    core at t = 1; jitted in JAX, its pos traced), then the rest as one piece that starts
    wherever k is. Equals the whole forward."""
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=6)
    b = x.shape[0]
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
        step = be.fn(decode_step, config=cfg, xp=be.xp)
        state = decode_init(cfg, b, xp=be.xp, dtype=xt.dtype)
        rows, states = [], [state]  # states[k]: after k positions, token by token
        for j in range(T):
            out, state = step(p, xt[:, j], state)
            rows.append(to_numpy(out)[:, None, :])
            states.append(state)
        _assert_whole(np.concatenate(rows, axis=1), want, cfg, be, "token by token")
        for k in _splits(be):
            out, state = flash_core(p, xt[:, k:], states[k], config=cfg, xp=be.xp)
            got = np.concatenate([*rows[:k], to_numpy(out)], axis=1)
            _assert_whole(got, want, cfg, be, f"{k} steps, then one piece")
            assert int(to_numpy(state["pos"])) == T


@pytest.mark.parametrize("name", ["sum", "mean-learned"])
def test_a_traced_position_takes_the_comparisons_path(name, monkeypatch):
    """pos unknown in Python (as under jit; forced here on NumPy): a step finds its slot by
    comparisons and equals the forward; a longer piece must start at a chunk boundary, and one
    that does not gives NaN, never a silent wrong answer."""
    be, cfg = _Backend("spec"), CONFIGS[name]
    params, x = _case(cfg, seed=7)
    want = fc.flash(params, x, config=cfg, xp=be.xp)
    monkeypatch.setattr(ops, "_host_position", lambda xp, pos: None)
    state = decode_init(cfg, x.shape[0], xp=be.xp, dtype=x.dtype)
    rows = []
    for j in range(C + 2):
        out, state = decode_step(params, x[:, j], state, config=cfg, xp=be.xp)
        rows.append(out[:, None, :])
    _assert_whole(np.concatenate(rows, axis=1), want[:, : C + 2], cfg, be, "steps")
    out, _ = flash_core(params, x[:, C + 2 :], state, config=cfg, xp=be.xp)
    assert np.isnan(out).all()
    _, aligned = _stream(be, params, x[:, :C], cfg, [0, C])
    out, _ = flash_core(params, x[:, C:], aligned, config=cfg, xp=be.xp)
    _assert_whole(out, want[:, C:], cfg, be, "a piece at a boundary")


def test_a_mid_chunk_piece_refuses_a_mask():
    be, cfg = _Backend("spec"), CONFIGS["sum"]
    params, x = _case(cfg)
    _, state = _stream(be, params, x[:, :3], cfg, [0, 3])
    with pytest.raises(ValueError, match="mid-chunk"):
        flash_core(params, x[:, 3:], state, config=cfg, mask=np.ones((2, T - 3), bool))


def _run_shards(be, params, x, cfg, world, mask=None, segment_ids=None):
    """flash_shard on ``world`` threads (each with its slice) meeting in an all-gather."""
    opts = dict(mask=mask, segment_ids=segment_ids, xp=be.xp, numpy=to_numpy)
    return run_shards(params, x, cfg, world, **opts)


@pytest.mark.parametrize(
    ("backend", "name"), _grid(["spec", "torch", "jax", "tf"], ["sum", "mean-learned"])
)
def test_context_parallel_split_at_chunk_boundaries_equals_the_whole(backend, name):
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=3)
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
    for world in (2, 4):  # shards of two chunks, of one chunk
        got = _run_shards(be, p, xt, cfg, world)
        assert_close(
            got, want, reorder=longest_reduction(cfg, T), dtype=be.dtype, err_msg=f"world {world}"
        )


SEGMENT_CONFIGS = {
    "sum": CONFIGS["sum"],
    "mean-learned": CONFIGS["mean-learned"],
    "non-causal": flash_cfg(token_shift=True, linear_norm="mean"),
}


@pytest.mark.parametrize("name", list(SEGMENT_CONFIGS))
@pytest.mark.parametrize("backend", ["spec", "torch"])
def test_context_parallel_with_segment_ids_equals_the_whole(backend, name):
    """Packed segments that start, end and run through shard boundaries, with padding and a NaN
    row: every output (and where NaN reaches) equals flashcore.flash on the whole sequence."""
    be, cfg = _Backend(backend), SEGMENT_CONFIGS[name]
    params, x = _case(cfg, seed=4)
    seg = np.array(
        [
            [0] * 3 + [1] * 9 + [2] * 4,  # a segment over the first two boundaries (world 4)
            [5] * 4 + [6] * 2 + [7] * 6 + [8] * 4,  # one ends exactly at a boundary
        ]
    )
    mask = np.ones((2, T), bool)
    mask[1, 10:12] = False
    x[0, 5, 2] = np.nan  # segment 1: reaches what it reaches in the whole layer
    with be.context():
        p, (xt, st, mt) = be.tensors(params, x, seg, mask)
        want = to_numpy(fc.flash(p, xt, config=cfg, mask=mt, segment_ids=st, xp=be.xp))
    for world in (2, 4):
        got = _run_shards(be, p, xt, cfg, world, mask=mt, segment_ids=st)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert ok[1].all() and not ok[0].all()
        assert_close(
            got[ok],
            want[ok],
            reorder=longest_reduction(cfg, T),
            dtype=be.dtype,
            err_msg=f"world {world}",
        )
