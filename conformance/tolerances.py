"""The one tolerance table of the conformance suite. No test loosens it locally.

A result passes when, elementwise, |got - expected| <= atol * scale + rtol * |expected|. The scale
is the size of the whole quantity: max |expected| over the output or the input gradient; over all
parameter gradients of the case together (a (1,) gradient such as norm.scale is a sum over every
position with heavy cancellation and is judged against its siblings, not against itself); and
sum |output * cotangent| for a layer's loss sum(output * cotangent) (|loss| for an LM). The
reported error is the worst ratio |got - expected| / (atol * scale + rtol * |expected|); <= 1
passes.

Why these numbers:
- float64: the spec in float64 reproduces itself to ~1e-15; backends reorder sums (blocked
  matmuls, fused kernels), which costs a few ulps times the reduction length (<= 64 here).
- float32: unit roundoff 6e-8; the layer chains ~6 reductions of length <= 64 and a relu^2 that
  doubles relative error, giving ~1e-6 relative to the tensor's scale; 1e-5 leaves 10x headroom.
  Gradients go through one more pass of each reduction and the cotangent: 1e-4.
- bfloat16: unit roundoff 3.9e-3 (8-bit mantissa) for inputs, weights and every intermediate
  stored in bf16 (the attention core accumulates in float32). The golden weights are deliberately
  large (Q K^T / C of order 1-10, so that every relu^2 entry matters), and relu^2 doubles relative
  error, so even exact arithmetic on bf16-rounded weights and inputs misses by ~3e-2 of scale on a
  two-layer LM. Measured worst over the golden grid (torch, bf16 weights and inputs): output 5.6e-2,
  gradients 1.1e-1 of scale; the table leaves ~1.4x headroom. At this level bf16 rows still catch
  what breaks a port (a flipped sign, a shifted mask, a missing term: errors of order 1).
"""

from __future__ import annotations

__all__ = [
    "TOLERANCES",
    "QUANTITIES",
    "tolerance",
    "LONG_CONTEXT",
    "long_context_tolerance",
    "REORDER_ULPS",
    "reorder_tolerance",
    "longest_reduction",
    "ELEMENTWISE_ULPS",
    "elementwise_tolerance",
    "TRAINING",
    "training_tolerance",
]

QUANTITIES = ("output", "loss", "grad_input", "grad_params")

# (dtype, quantity) -> (rtol, atol-relative-to-scale)
TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("float64", "output"): (1e-10, 1e-10),
    ("float64", "loss"): (1e-10, 1e-10),
    ("float64", "grad_input"): (1e-9, 1e-9),
    ("float64", "grad_params"): (1e-9, 1e-9),
    ("float32", "output"): (1e-5, 1e-5),
    ("float32", "loss"): (1e-5, 1e-5),
    ("float32", "grad_input"): (1e-4, 1e-4),
    ("float32", "grad_params"): (1e-4, 1e-4),
    ("bfloat16", "output"): (8e-2, 8e-2),
    ("bfloat16", "loss"): (8e-2, 8e-2),
    ("bfloat16", "grad_input"): (1.5e-1, 1.5e-1),
    ("bfloat16", "grad_params"): (1.5e-1, 1.5e-1),
}


def tolerance(dtype: str, quantity: str) -> tuple[float, float]:
    try:
        return TOLERANCES[(dtype, quantity)]
    except KeyError:
        raise KeyError(f"no tolerance for dtype {dtype!r} and quantity {quantity!r}") from None


# Long contexts in low precision (tests/test_long_context.py): causal FLASH at d = 16, s = 8,
# e = 32, C = 256; T = 64K (output and input gradient) and 256K (output), one batch row; the
# float16 / bfloat16 run against the float32 run of the same backend on the same rounded weights,
# inputs and cotangent. The number is the largest |low - float32| as a fraction of the float32
# result's largest entry. Measured here (torch fused CPU core / jax / tf), worst over 64K and 256K:
#   bfloat16: output 1.11e-2 / 1.26e-2 / 1.16e-2, input gradient 1.11e-2 in all three;
#   float16:  output 1.80e-3 / 1.79e-3 / 2.20e-3, input gradient 1.26e-3 / 1.94e-3 / 1.57e-3.
# That is 4.5-6.5 unit roundoffs (bfloat16 2^-9 = 1.95e-3, float16 2^-11 = 4.9e-4): the activations
# between the matmuls are stored in the low dtype (about five roundings in a row, relu^2 doubling
# one), while the attention core runs in float32; the error does not grow from 64K to 256K. The
# bounds leave ~1.6x headroom. They also catch a chunk state summed in bfloat16: at 256K (1024
# chunks) that alone costs 2.69e-2 in the float16 run (torch), 7x the float16 bound.
LONG_CONTEXT: dict[tuple[str, str], float] = {
    ("bfloat16", "output"): 2e-2,
    ("bfloat16", "grad_input"): 2e-2,
    ("float16", "output"): 4e-3,
    ("float16", "grad_input"): 4e-3,
}


def long_context_tolerance(dtype: str, quantity: str) -> float:
    """The bound of :data:`LONG_CONTEXT` for ``dtype`` and ``quantity`` ('output', 'grad_input')."""
    try:
        return LONG_CONTEXT[(dtype, quantity)]
    except KeyError:
        raise KeyError(f"no long-context bound for {dtype!r} and {quantity!r}") from None


# Two code paths that compute the same expression in the same dtype and differ only in the order
# of their sums: a module against the spec it calls, transposed against contiguous weights (BLAS
# picks another kernel per layout), one thread against two, this CPU against the one that wrote
# a golden file. Each rounding costs at most one unit roundoff eps of its partial sum, and a sum of
# n terms reordered moves by at most ~n eps of its magnitude; the few layers of a test model chain
# a handful of such sums (relu^2 doubling one). Measured here in float64, as a fraction of the
# tensor's scale: the torch modules against the spec (both weight layouts, 1 and 2 threads) at
# most 3.9 eps; the spec against the golden outputs 6.4 eps, torch autodiff against the golden
# gradients 12 eps; every reorder comparison of the suite still passes at 0.5 eps per unit of
# length. 16 eps per unit of reduction length (d, e, T, ...: the longest one of the computation;
# >= 16 in every test) leaves a margin of 20x or more on those and is still ~1e-12 below what
# any wrong term, shifted mask or dropped scale costs (order 1e-2 of scale or more).
REORDER_ULPS = 16.0

EPS = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "bfloat16": 2.0**-7,
    "float16": 2.0**-10,
}


def reorder_tolerance(dtype: str, length: int) -> tuple[float, float]:
    """(rtol, atol-relative-to-scale) for the same math summed in another order.

    ``length`` is the longest reduction of the computation (feature size, expanded size, T, ...).
    """
    try:
        eps = EPS[dtype]
    except KeyError:
        raise KeyError(f"no unit roundoff for dtype {dtype!r}") from None
    bound = REORDER_ULPS * eps * max(int(length), 1)
    return bound, bound


def longest_reduction(config, time: int = 1) -> int:
    """The longest sum in a layer or LM of ``config`` run over ``time`` positions: the feature,
    expanded, query/key, head, chunk and vocabulary sizes and T itself."""
    block = getattr(config, "block", config)
    sizes = [time, getattr(config, "vocab_size", 1)]
    for field in ("dim", "expanded_dim", "qk_dim", "chunk_size", "hidden_dim", "mlp_dim"):
        value = getattr(block, field, None)
        if isinstance(value, int):
            sizes.append(value)
    return max(sizes)


# One elementwise function (erf, silu, a rotary angle, their derivatives) against its formula in
# float64: a correctly rounded result is within half an ulp, a libm-style one within a few; each
# further function composed adds as much. 4 ulps of the result per function.
ELEMENTWISE_ULPS = 4.0


def elementwise_tolerance(dtype: str, functions: int = 1) -> float:
    """The bound, relative to the result's scale, for ``functions`` elementwise functions composed
    in ``dtype`` against float64."""
    try:
        eps = EPS[dtype]
    except KeyError:
        raise KeyError(f"no unit roundoff for dtype {dtype!r}") from None
    return ELEMENTWISE_ULPS * eps * max(int(functions), 1)


# Short float32 training runs compared step by step (a few steps of a 2-layer d = 32 LM):
# - "resume": a run stopped (or SIGKILLed) and resumed against an uninterrupted one. The resumed
#   process repeats the same float32 operations on the restored bytes (weights, AdamW moments,
#   sampler state), but in a new process whose thread schedule may sum in another order: a few
#   ulps per step, compounding over the run. Loss: 1e-6 relative (~8 ulps); weights after the
#   run: 1e-5 relative and 1e-6 absolute (weights of order 1e-2 move by AdamW's lr-sized steps).
# - "data_parallel": two workers against one process on the same global batch: the gradient is
#   summed over workers in another order every step; 1e-5 relative on the loss and the weights.
# - "backends": two frameworks' float32 engines (torch against jax or tf) from the same weights on
#   the same batches: every op sums in its own order, every step. AdamW divides by sqrt(v) + eps,
#   so the update of a weight whose gradient is near eps (1e-8) carries its gradient's rounding at
#   full size: with relu^2 attention alive from the start (init 'uniform'), nudging the initial
#   weights of one torch engine by one ulp moved its weights after 4 steps (lr 1e-2, 2-layer d = 16
#   LM) by up to 1.3e-5 (1.5e-6 from the zero start), and tf against torch differed by 4.5e-5
#   (jax 4e-7). Loss: 1e-5 relative; weights: 2e-4 absolute, 4x the largest seen and 50x below
#   the lr-sized change a lost step or a stale moment makes.
# - "context_parallel": each sequence split along t over two workers against one process: every
#   FLASH layer adds the other shards' chunk-state summaries in another grouping, so the gradient
#   differs by ~1e-6 of each tensor's largest entry every step (measured at step 1: 1.6e-6). AdamW
#   carries that rounding at full size into the few entries whose own gradient is that small (the
#   embedding rows of rare bytes): after 5 steps (2-layer d = 32 LM, lr 3e-3) the weights moved
#   by up to 4.5e-6 absolute (torch) and 8e-7 (jax) of their lr-sized 1e-3 changes, the loss by
#   2e-7 relative. Loss: 1e-5 relative; weights and moments: 1e-5 relative or 2e-5 absolute,
#   4x the largest seen.
# What these catch: a wrong batch, a lost or repeated step, a stale AdamW moment, a gradient not
# averaged over workers all move the loss by 1e-3 relative or more within the first steps.
TRAINING: dict[tuple[str, str], tuple[float, float]] = {
    ("resume", "loss"): (1e-6, 0.0),
    ("resume", "params"): (1e-5, 1e-6),
    ("data_parallel", "loss"): (1e-5, 0.0),
    ("data_parallel", "params"): (1e-5, 0.0),
    ("context_parallel", "loss"): (1e-5, 0.0),
    ("context_parallel", "params"): (1e-5, 2e-5),
    ("backends", "loss"): (1e-5, 0.0),
    ("backends", "params"): (0.0, 2e-4),
}


def training_tolerance(kind: str, quantity: str) -> tuple[float, float]:
    """(rtol, atol) of :data:`TRAINING` for ``kind`` ('resume', 'data_parallel',
    'context_parallel', 'backends') and ``quantity``
    ('loss', 'params')."""
    try:
        return TRAINING[(kind, quantity)]
    except KeyError:
        raise KeyError(f"no training tolerance for {kind!r} and {quantity!r}") from None
