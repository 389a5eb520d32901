"""One FLASH core with explicit state (:func:`flashcore.layers.flash_core`): a sequence split at
any chunk boundary gives the same result as the whole, whether the split is made by streaming
(the carried state handed from piece to piece), by context parallelism (a shard's initial state
is the gathered prefix of the shards before it) or by decoding (the state carried token by
token), in every backend (the spec on NumPy, torch, jax, tf; torch also through its fused core).
Context parallelism with packed segment ids has its own test. float64 (JAX: float32)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import numpy as np
import pytest
from _cases import flash_cfg, noisy_params, run_shards

import flashcore as fc
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


def _stream(be, params, x, cfg, cuts, mask=None):
    """flash_core over the pieces x[:, cuts[i]:cuts[i+1]], the state carried between them."""
    state = decode_init(cfg, x.shape[0], xp=be.xp, dtype=x.dtype)
    outs = []
    for i, j in zip(cuts[:-1], cuts[1:], strict=True):
        m = None if mask is None else mask[:, i:j]
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
    """A prefix (ending at a chunk boundary or mid-chunk) through flash_core, the rest token by
    token through decode_step, continuing the same state: every row equals the whole forward's."""
    be, cfg = _Backend(backend), CONFIGS[name]
    params, x = _case(cfg, seed=2)
    with be.context():
        p, (xt,) = be.tensors(params, x)
        want = to_numpy(be.fn(fc.flash, config=cfg, xp=be.xp)(p, xt))
        for cut in (0, C, C + 2, 3 * C):  # C + 2: mid-chunk, the partial chunk in the state
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
