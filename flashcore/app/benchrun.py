"""What ``flashcore bench`` measures, and each measurement in its own child process.

The models, at batch 1, d = 512, C = 256, s = 128, e = 1024, causal (the paper's FLASH sizes):

- ``flashcore``: two FLASH layers of the backend's own module (``flashcore.torch.FLASH``,
  ``flashcore.jax.FLASH`` (Flax NNX), ``flashcore.tf.FLASH`` (a Keras layer)), in torch, jax and tf;
- ``flashcore-speclayer`` (torch, optional): the same torch layers through the spec's layer
  (``flashcore.flash``) with the blocked torch attention core, the path before the fused layer;
- ``flashcore-speccore`` (torch, optional): the same through the spec's layer and its own core;
- ``flash-pytorch`` (torch): two ``flash_pytorch.FLASH(dim=512, group_size=256,
  query_key_dim=128, causal=True)`` layers (version 0.1.9, the peer);
- ``transformer++``: one Transformer++ block of the backend (``TransformerBlock``: RMSNorm, RoPE,
  causal softmax attention, SwiGLU; torch's on ``scaled_dot_product_attention``, jax's and tf's
  the spec's dense T x T attention), its FFN width chosen from the parameter spec so that it has
  the parameter count of the FLASH pair.

The step, one definition for every backend and model: forward of the model on x (1, T, 512),
``loss = sum(y * cotangent)`` summed in float32 with a fixed random cotangent (1, T, 512), and
the backward pass w.r.t. x and every parameter. The flashcore models' weights are the canonical
``flashcore.init(config, seed=i)`` of layer i, loaded into each backend's module, and x and the
cotangent are the same NumPy draws (``benchrun.inputs``) in every backend, so the three backends'
steps compute the same gradients (``tests/test_bench.py`` checks it). Each backend writes the step
natively (``flashcore.<backend>.bench.build_step``): torch autograd, ``jax.jit(jax.value_and_grad)``
(compiled once), ``tf.function(jit_compile=True)`` around ``tf.GradientTape`` (compiled once).

bfloat16, as each backend trains in it: torch ``torch.autocast("cpu", torch.bfloat16)`` (float32
parameters and x; bf16 matmuls); jax the module built in bfloat16 (bf16 parameters and x); tf the
Keras policy ``mixed_bfloat16`` (float32 variables read as bf16, x cast to bf16 by Keras). In all
three the loss is summed in float32. On CPU, where XLA has no fast bf16 dot, jax's and tf's blocks
compute in float32 from their bf16 storage (:mod:`flashcore.dotpath`; the rows say
"bfloat16 (f32 dots)" and are measured against the float32 matmul peak);
``FLASHCORE_LOW_PRECISION_DOTS=native`` keeps bf16 compute.

Each measurement is ``python -m flashcore.app.benchrun --child JSON`` (:func:`child`): it builds
the step, runs ``warmup`` steps (at least one for jax / tf: the first call compiles, so compile
time is not in the timings), then ``repeats`` timed steps, each blocked on until its results are
computed (``jax.block_until_ready``; ``.numpy()`` of the compiled tf function's loss; torch on CPU
is synchronous). It reports the median wall time and process CPU time (all threads) per step and
the peak memory: the child's maximum resident set (``ru_maxrss``) above what was resident once the
step was built (imports, model, inputs), the same for every backend (for jax / tf it includes the
compiler's own peak). The fp32 and bf16 matmul peaks are ``torch.mm`` of n x n, in children too.

FLOPs: 3x the forward matmul FLOPs (backward = 2x forward). FLASH layer, per token:
2 (d (2e + s) + e d) + 2 (C s + C e + 2 s e) (dense C x C chunks, as both FLASH implementations
compute them); Transformer++: 2 (4 d^2 + 3 d f) + 2 T d (causal attention, half of T x T).

    env = child_env(system_malloc=False, backend="jax", threads=None)
    result = run_child({"kind": "step", "backend": "jax", "model": "flashcore", ...}, env, 600.0)
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import flashcore as fc

__all__ = [
    "DIM",
    "CHUNK",
    "QK",
    "BACKENDS",
    "MODELS",
    "DEFAULT_MODELS",
    "DTYPES",
    "MALLOC_ENV",
    "HUGEPAGE_TUNABLE",
    "with_tunable",
    "malloc_env",
    "flash_config",
    "transformer_config",
    "model_config",
    "canonical_weights",
    "inputs",
    "flash_layer_params",
    "matched_ffn_dim",
    "flops_per_token",
    "attention_flops",
    "child_env",
    "run_child",
    "measure",
    "child",
    "doc_paragraph",
]

DIM, CHUNK, QK, EXPANSION, HEADS = 512, 256, 128, 2, 8
BACKENDS = ("torch", "jax", "tf")
# model -> the backends that have it
MODELS: dict[str, tuple[str, ...]] = {
    "flashcore": BACKENDS,
    "flashcore-speclayer": ("torch",),
    "flashcore-speccore": ("torch",),
    "flash-pytorch": ("torch",),
    "transformer++": BACKENDS,
}
DEFAULT_MODELS = ("flashcore", "flash-pytorch", "transformer++")
DTYPES = ("float32", "bfloat16")
RESULT_MARK = "BENCH_RESULT "  # the child's result line: RESULT_MARK + json

# Large CPU allocations are mmap'd and page-faulted on every step by default; keeping freed
# memory in the heap (no mmap, no trim) saves that for every model alike. glibc's hugetlb=1
# tunable (glibc >= 2.35; ignored elsewhere) has malloc madvise its heap for transparent huge
# pages (the kernel's THP mode 'madvise'): 512x fewer page faults and TLB misses on the
# (T, 2e + s) tensors of long contexts. Measured on the 2-core AMD EPYC VM (a one-off script), a
# fresh (65536, 128) x (128, 1024) jnp matmul 216 -> 116 ms (122K -> 738 page faults); by this
# bench, the jax FLASH pair at 64K 285 -> 245 us/token (CPU time 480 -> 411), torch and tf within
# noise (docs/benchmarks.md, "long contexts and huge pages").
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
#: The glibc tunable a child gets on top of :data:`MALLOC_ENV` (merged into GLIBC_TUNABLES).
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def with_tunable(current: str | None, tunable: str) -> str:
    """GLIBC_TUNABLES ``current`` (colon-separated name=value, or None) with ``tunable`` added,
    unless ``current`` already sets that name (the user's value is kept)."""
    name = tunable.split("=", 1)[0]
    items = [t for t in (current or "").split(":") if t]
    if any(t.split("=", 1)[0] == name for t in items):
        return ":".join(items)
    return ":".join([*items, tunable])


def malloc_env(current: dict) -> dict:
    """The malloc settings a child gets, given the parent's environment ``current``:
    :data:`MALLOC_ENV` and GLIBC_TUNABLES with :data:`HUGEPAGE_TUNABLE` (what bench.json records)."""
    return {
        **MALLOC_ENV,
        "GLIBC_TUNABLES": with_tunable(current.get("GLIBC_TUNABLES"), HUGEPAGE_TUNABLE),
    }


# -- the models' configs and weights, inputs, the FLOP model --------------------------------------


def flash_config() -> fc.FlashConfig:
    """The benchmarked FLASH layer: d 512, e 1024, s 128, C 256, causal."""
    return fc.FlashConfig(
        dim=DIM, expansion=EXPANSION, qk_dim=QK, chunk_size=CHUNK, causal=True, max_len=CHUNK
    )


def transformer_config(ffn_dim: int) -> fc.TransformerConfig:
    """The Transformer++ baseline block with SwiGLU width ``ffn_dim``."""
    return fc.TransformerConfig(dim=DIM, heads=HEADS, ffn_dim=ffn_dim, causal=True)


def _spec_params(config) -> int:
    """The parameter count of a block config, from its canonical parameter spec."""
    return sum(int(np.prod(p.shape)) for p in fc.param_spec(config).values())


def flash_layer_params() -> int:
    """The parameter count of one benchmarked FLASH layer (from the parameter spec)."""
    return _spec_params(flash_config())


def matched_ffn_dim(target_params: int) -> int:
    """The SwiGLU width f (a multiple of 8) whose Transformer++ block has about ``target_params``
    parameters (counted from the parameter spec; the count grows linearly in f)."""
    p8, p16 = _spec_params(transformer_config(8)), _spec_params(transformer_config(16))
    slope = (p16 - p8) / 8
    return max(8, int(round((8 + (target_params - p8) / slope) / 8)) * 8)


def model_config(model: str, ffn_dim: int) -> fc.FlashConfig | fc.TransformerConfig:
    """The config of ``model``'s layers (the peer's sizes are the FLASH config's)."""
    return transformer_config(ffn_dim) if model == "transformer++" else flash_config()


def canonical_weights(model: str, config) -> list[dict[str, np.ndarray]]:
    """The canonical float32 weights of each of ``model``'s layers, ``fc.init(config, seed=i)``
    for layer i (two FLASH layers, one Transformer++ block); [] for the peer (its own init)."""
    n = {"flashcore": 2, "flashcore-speclayer": 2, "flashcore-speccore": 2, "transformer++": 1}
    n = n.get(model, 0)
    return [fc.init(config, seed=i, dtype=np.float32) for i in range(n)]


def inputs(t: int, dim: int, *, batch: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x and the cotangent, both (batch, t, dim) float32 standard normal, the same in every
    backend."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, t, dim), dtype=np.float32)
    cot = rng.standard_normal((batch, t, dim), dtype=np.float32)
    return x, cot


def flops_per_token(model: str, t: int, ffn_dim: int | None = None) -> float:
    """Forward+backward FLOPs per token (3x the forward matmul FLOPs; the formulas above)."""
    d, e, s, c = DIM, EXPANSION * DIM, QK, CHUNK
    if model.startswith("flash"):
        layer = 2 * (d * (2 * e + s) + e * d) + 2 * (c * s + c * e + 2 * s * e)
        return 3.0 * 2 * layer
    f = ffn_dim or matched_ffn_dim(2 * flash_layer_params())
    return 3.0 * (2 * (4 * d * d + 3 * d * f) + 2 * t * d)


def attention_flops(core: str, t: int, causal: bool) -> float:
    """Forward+backward FLOPs (3x the forward's) of one attention core over t tokens: 'gau',
    GAU's relu(Q K^T / t + B)^2 V with q, k (t, s) and v (t, e), s and e the FLASH layer's;
    'sdpa', the Transformer++ block's softmax attention over d = heads x head_dim. Pairs: the
    t (t + 1) / 2 of the lower triangle when causal, else t^2."""
    pairs = t * (t + 1) / 2 if causal else float(t * t)
    width = {"gau": QK + EXPANSION * DIM, "sdpa": 2 * DIM}[core]
    return 3.0 * 2 * pairs * width


def doc_paragraph(start: str) -> str:
    """The paragraph of this module's docstring that begins with ``start``, on one line, in
    markdown (for bench.md)."""
    text = __doc__.split("\n" + start, 1)[1].split("\n\n")[0]
    return " ".join((start + text).split()).replace("``", "`")


# -- the parent's side: one child per measurement ---------------------------------------------------


def child_env(*, system_malloc: bool, backend: str | None = None, threads: int | None = None):
    """This process's environment for a child: :func:`malloc_env` unless ``system_malloc``,
    unbuffered output and, with ``threads``, OMP_NUM_THREADS (and for jax / tf with 1 thread,
    XLA's single-threaded CPU flags)."""
    env = dict(os.environ)
    if not system_malloc:
        env.update(malloc_env(env))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        if backend in ("jax", "tf") and threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    return env


def run_child(job: dict, env: dict, timeout: float) -> dict:
    """Run ``python -m flashcore.app.benchrun --child JSON(job)``; its result dict (the last
    result line of its stdout), or {"error": why} when it timed out, failed or printed none."""
    cmd = [sys.executable, "-m", "flashcore.app.benchrun", "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    return {"error": f"child failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}


# -- the child's side: one measurement --------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build(job: dict):
    """``flashcore.<backend>.bench.build_step`` for a step job: (run, gradients, info).

    run(): one step, returning once its results are computed; gradients(): one step's loss and
    gradients as float64 NumPy, {"loss", "x", "layers.{i}.<canonical name>"} (the peer: loss and
    x only); info: what the backend reports about the model (e.g. the torch core's path)."""
    backend = importlib.import_module(f"flashcore.{job['backend']}.bench")
    config = model_config(
        job["model"], job.get("ffn_dim") or matched_ffn_dim(2 * flash_layer_params())
    )
    x, cot = inputs(job["t"], config.dim)
    run, gradients, info = backend.build_step(
        job["model"],
        config,
        canonical_weights(job["model"], config),
        x,
        cot,
        job["dtype"],
        threads=job.get("threads"),
        compile=job.get("compile", False),
    )
    # The NumPy inputs stay alive in every backend, as in torch (whose tensors share them), so
    # that no backend's steps reuse their freed memory unseen by the resident-set measurement.
    return functools.partial(_run_keeping, run, (x, cot)), gradients, info


def _run_keeping(run, _inputs):
    return run()


def measure(run, *, warmup: int, repeats: int) -> dict:
    """Time ``run`` (one blocked step): ``warmup`` untimed calls, then ``repeats`` timed ones.
    Median wall / CPU seconds, every wall time, the first call's wall time and the peak memory
    above the resident set before the first call (MB)."""
    rss0 = _rss_mb()
    first = float("nan")
    for i in range(warmup):
        t0 = time.perf_counter()
        run()
        if i == 0:
            first = time.perf_counter() - t0
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "wall_all": wall,
        "first_step_s": first,
        # the high-water mark of the steps above what was resident before the first one
        "peak_mb": max(0.0, _peak_rss_mb() - rss0),
        "rss_before_mb": rss0,
    }


def _child_job(job: dict) -> dict:
    if job["kind"] == "matmul":
        backend = job.get("backend", "torch")
        if backend == "torch":
            from flashcore.torch import bench

            return bench.matmul_peak(job["n"], job["dtype"], threads=job.get("threads"))
        if backend == "jax":
            from flashcore.jax import bench
        else:
            from flashcore.tf import bench
        return bench.matmul_peak(job["n"], job["dtype"])
    if job["kind"] == "attention":
        from flashcore.torch import bench

        return bench.attention_cores(
            job["t"], job["dtype"], dim=DIM, qk_dim=QK, expansion=EXPANSION, heads=HEADS,
            threads=job.get("threads"), repeats=job["repeats"],
        )  # fmt: skip
    run, _, info = build(job)
    compiles = job["backend"] != "torch" or job.get("compile", False)
    warmup = max(job["warmup"], 1 if compiles else 0)  # the compiling first call is not timed
    return {**info, **measure(run, warmup=warmup, repeats=job["repeats"]), "warmup": warmup}


def child(job: dict) -> int:
    """Run one job ({"kind": "matmul" | "step", ...}) and print ``RESULT_MARK {json}``: the
    measurement, or {"error": why}."""
    try:
        res = _child_job(job)
    except Exception as err:  # reported in the table
        res = {"error": f"{type(err).__name__}: {err}"}
    print(RESULT_MARK + json.dumps(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: python -m flashcore.app.benchrun --child JSON (run by flashcore bench)")
    sys.exit(child(json.loads(sys.argv[2])))
