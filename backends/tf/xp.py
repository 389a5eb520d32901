"""A minimal array-API namespace over TensorFlow tensors (array-api-compat has none for TF).

It implements exactly the subset that the flashcore spec calls (see ``flashcore/_xp.py``), with
array-API semantics: NumPy-style broadcasting, no implicit type promotion between tensors (TF
raises on mixed dtypes; the spec never mixes them), ``cumulative_sum(..., include_initial=True)``,
``take`` along one axis, and ``erf`` / ``silu`` (TF's own kernels, which the spec takes when a
namespace has them). Elementwise operators, comparisons and basic slicing are the tensors' own.

Shapes are static: sizes in ``zeros``/``ones``/``reshape``/``broadcast_to`` are Python ints, as
the spec computes them from ``x.shape``. The one exception is the batch size, which Keras leaves
unknown (None) when it traces ``fit``: ``xp.with_batch(tf.shape(x)[0])`` is a namespace in which
None in those shapes stands for it; plain ``xp`` raises a clear ValueError on None. Device
arguments are TF device strings (``array_api_compat.device`` returns ``tensor.device``); an empty
string or None leaves placement to TF. The default floating dtype is float32 and the default
integer dtype int64 (the array API leaves both to the library).

    from flashcore.tf.xp import xp
    out = flashcore.flash(params, x, config=cfg, xp=xp)

``matmul`` with a bfloat16 / float16 operand takes the path
:func:`flashcore.dotpath.low_precision_dots` gives the platform (GPU when TensorFlow sees one,
else CPU): on CPU (XLA has no fast bf16 dot there) the operands are upcast, the dot runs in
float32 and the result is cast back; elsewhere the native dot.
:func:`dot_path` says which (``FLASHCORE_LOW_PRECISION_DOTS`` overrides it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from flashcore import dotpath
from flashcore._xp import is_low_precision, pairwise_cumulative_sum
from flashcore.dotpath import low_precision_dots
from flashcore.kernels import FastCore, Kernels

from . import kernels

__all__ = ["Namespace", "xp", "KERNELS", "dot_path", "float32_compute"]


def _platform() -> str:
    """'gpu' when TensorFlow sees a GPU (where it places ops by default), else 'cpu'."""
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def dot_path(dtype) -> str:
    """The path of a dot of ``dtype`` operands here: ``"float32"`` (upcast, float32 dot, cast
    back) or ``"native"``; always ``"native"`` for float32 / float64."""
    return low_precision_dots(_platform()) if is_low_precision(tf.as_dtype(dtype)) else "native"


def _on(device):
    """Place new tensors on ``device`` (a TF device string); '' or None: TF's choice."""
    return tf.device(device) if device else contextlib.nullcontext()


def float32_compute(params: dict) -> tuple[dict, str | None]:
    """:func:`flashcore.dotpath.float32_compute` with :func:`dot_path` and ``tf.cast``: (params in
    float32, the storage dtype's name) for bf16 / float16 params on the float32 path, else
    (params, None). How :mod:`flashcore.tf.layers` runs a low-precision block on CPU."""
    return dotpath.float32_compute(params, dot_path=dot_path, cast=tf.cast)


class Namespace:
    """The array-API subset used by flashcore, over ``tf.Tensor``. Use the instance :data:`xp`.

    Its ``erf`` and ``silu`` are what :func:`flashcore._xp.erf` and :func:`flashcore.ops.silu` take.
    """

    __name__ = "flashcore.tf.xp"

    def __init__(self, batch: tf.Tensor | None = None):
        self._batch = batch

    def with_batch(self, batch: tf.Tensor) -> Namespace:
        """A namespace in which ``None`` in a shape stands for ``batch`` (a scalar int tensor): the
        batch size when it is unknown at trace time (Keras ``fit`` traces with batch None)."""
        return Namespace(batch)

    def _shape(self, shape) -> list:
        dims = [shape] if isinstance(shape, int) else list(shape)
        if any(d is None for d in dims) and self._batch is None:
            raise ValueError(
                f"flashcore.tf.xp needs static shapes, got {tuple(dims)}: a dimension is unknown "
                "at trace time (use xp.with_batch(tf.shape(x)[0]) for an unknown batch size)"
            )
        return [self._batch if d is None else int(d) for d in dims]

    bool = tf.bool
    int32 = tf.int32
    int64 = tf.int64
    float16 = tf.float16
    bfloat16 = tf.bfloat16
    float32 = tf.float32
    float64 = tf.float64

    # ---- creation -------------------------------------------------------------------------
    @staticmethod
    def asarray(obj, /, *, dtype=None, device=None, copy=None) -> tf.Tensor:
        """A tensor from a tensor, NumPy array or Python scalar/sequence (dtype kept unless given;
        Python floats become float32, Python ints int64)."""
        if isinstance(obj, tf.Tensor | tf.Variable):
            return obj if dtype is None else tf.cast(obj, dtype)
        arr = np.asarray(obj)
        if dtype is None and not isinstance(obj, np.ndarray | np.generic):
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(np.int64)
        with _on(device):
            return tf.constant(arr, dtype=dtype)

    def zeros(self, shape, *, dtype=None, device=None) -> tf.Tensor:
        with _on(device):
            return tf.zeros(self._shape(shape), dtype=dtype or tf.float32)

    def ones(self, shape, *, dtype=None, device=None) -> tf.Tensor:
        with _on(device):
            return tf.ones(self._shape(shape), dtype=dtype or tf.float32)

    @staticmethod
    def zeros_like(x, /, *, dtype=None, device=None) -> tf.Tensor:
        return tf.zeros_like(x, dtype=dtype)

    @staticmethod
    def ones_like(x, /, *, dtype=None, device=None) -> tf.Tensor:
        return tf.ones_like(x, dtype=dtype)

    @staticmethod
    def full_like(x, /, fill_value, *, dtype=None, device=None) -> tf.Tensor:
        dtype = dtype or x.dtype
        return tf.fill(tf.shape(x), tf.constant(fill_value, dtype=dtype))

    @staticmethod
    def arange(start, /, stop=None, step=1, *, dtype=None, device=None) -> tf.Tensor:
        if stop is None:
            start, stop = 0, start
        if dtype is None:
            floats = any(isinstance(v, float) for v in (start, stop, step))
            dtype = tf.float32 if floats else tf.int64
        with _on(device):
            return tf.range(start, stop, step, dtype=dtype)

    # ---- dtype and shape ------------------------------------------------------------------
    @staticmethod
    def isdtype(dtype, kind) -> bool:
        """Whether ``dtype`` is of ``kind``: a dtype, a kind name ('bool', 'signed integer',
        'unsigned integer', 'integral', 'real floating', 'complex floating', 'numeric') or a
        tuple of those."""
        if isinstance(kind, tuple):
            return any(Namespace.isdtype(dtype, k) for k in kind)
        dtype = tf.as_dtype(dtype)
        if not isinstance(kind, str):
            return dtype == tf.as_dtype(kind)
        kinds = {
            "bool": dtype.is_bool,
            "signed integer": dtype.is_integer and not dtype.is_unsigned,
            "unsigned integer": dtype.is_integer and dtype.is_unsigned,
            "integral": dtype.is_integer,
            "real floating": dtype.is_floating,
            "complex floating": dtype.is_complex,
        }
        kinds["numeric"] = not dtype.is_bool and any(kinds[k] for k in list(kinds)[1:])
        if kind not in kinds:
            raise ValueError(f"isdtype: unknown kind {kind!r}")
        return kinds[kind]

    @staticmethod
    def astype(x, dtype, /, *, copy=True, device=None) -> tf.Tensor:
        return tf.cast(x, dtype)  # tensors are immutable: copy makes no difference

    def reshape(self, x, /, shape, *, copy=None) -> tf.Tensor:
        return tf.reshape(x, self._shape(shape))

    @staticmethod
    def permute_dims(x, /, axes) -> tf.Tensor:
        return tf.transpose(x, perm=list(axes))

    @staticmethod
    def expand_dims(x, /, *, axis=0) -> tf.Tensor:
        return tf.expand_dims(x, axis)

    def broadcast_to(self, x, /, shape) -> tf.Tensor:
        return tf.broadcast_to(x, self._shape(shape))

    @staticmethod
    def concat(arrays: Sequence, /, *, axis=0) -> tf.Tensor:
        if axis is None:
            return tf.concat([tf.reshape(a, [-1]) for a in arrays], 0)
        return tf.concat(list(arrays), axis)

    @staticmethod
    def stack(arrays: Sequence, /, *, axis=0) -> tf.Tensor:
        return tf.stack(list(arrays), axis)

    @staticmethod
    def take(x, indices, /, *, axis=None) -> tf.Tensor:
        """Elements of ``x`` at integer ``indices`` (1-D) along ``axis`` (None: x must be 1-D)."""
        if axis is None:
            if x.shape.rank != 1:
                raise ValueError("take: axis is required for arrays of rank > 1")
            axis = 0
        return tf.gather(x, indices, axis=axis)

    @staticmethod
    def where(condition, x1, x2, /) -> tf.Tensor:
        return tf.where(condition, x1, x2)

    # ---- linear algebra and reductions ----------------------------------------------------
    @staticmethod
    def matmul(x1, x2, /) -> tf.Tensor:
        """Batched matmul with broadcasting over leading dims (operands of rank >= 2); in float32
        from low-precision operands where :func:`dot_path` says so."""
        if x1.shape.rank < 2 or x2.shape.rank < 2:
            raise ValueError("matmul: this namespace supports operands of rank >= 2 only")
        if x1.dtype == x2.dtype and dot_path(x1.dtype) == "float32":  # see the module doc
            y = tf.linalg.matmul(tf.cast(x1, tf.float32), tf.cast(x2, tf.float32))
            return tf.cast(y, x1.dtype)
        return tf.linalg.matmul(x1, x2)

    @staticmethod
    def sum(x, /, *, axis=None, dtype=None, keepdims=False) -> tf.Tensor:
        if dtype is not None:
            x = tf.cast(x, dtype)
        return tf.reduce_sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def mean(x, /, *, axis=None, keepdims=False) -> tf.Tensor:
        return tf.reduce_mean(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x, /, *, axis=None, keepdims=False) -> tf.Tensor:
        return tf.reduce_max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def min(x, /, *, axis=None, keepdims=False) -> tf.Tensor:
        return tf.reduce_min(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def argmax(x, /, *, axis=None, keepdims=False) -> tf.Tensor:
        """Index of the first largest entry along ``axis`` (int64)."""
        if axis is None:
            x, axis = tf.reshape(x, [-1]), 0
        out = tf.math.argmax(x, axis=axis, output_type=tf.int64)
        return tf.expand_dims(out, axis) if keepdims else out

    @staticmethod
    def sort(x, /, *, axis=-1, descending=False, stable=True) -> tf.Tensor:
        return tf.sort(x, axis=axis, direction="DESCENDING" if descending else "ASCENDING")

    @staticmethod
    def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial=False) -> tf.Tensor:
        """Inclusive cumulative sum along ``axis``; ``include_initial`` prepends a zero, so the
        axis grows by one (``out[..., :n]`` is then the exclusive sum)."""
        if axis is None:
            if x.shape.rank != 1:
                raise ValueError("cumulative_sum: axis is required for arrays of rank > 1")
            axis = 0
        if dtype is not None:
            x = tf.cast(x, dtype)
        if tf.executing_eagerly() or None in x.shape.as_list():  # TF's own kernel: O(n)
            out = tf.cumsum(x, axis=axis)
        else:  # in a graph that XLA may compile, where tf.cumsum is an O(n^2) reduce-window
            out = pairwise_cumulative_sum(xp, x, axis % x.shape.rank)
        if include_initial:
            pad = [[0, 0]] * x.shape.rank
            pad[axis % x.shape.rank] = [1, 0]
            out = tf.pad(out, pad)
        return out

    # ---- elementwise ----------------------------------------------------------------------
    @staticmethod
    def maximum(x1, x2, /) -> tf.Tensor:
        return tf.maximum(x1, x2)

    @staticmethod
    def minimum(x1, x2, /) -> tf.Tensor:
        return tf.minimum(x1, x2)

    exp = staticmethod(tf.math.exp)
    log = staticmethod(tf.math.log)
    sqrt = staticmethod(tf.math.sqrt)
    sin = staticmethod(tf.math.sin)
    cos = staticmethod(tf.math.cos)
    abs = staticmethod(tf.math.abs)
    isfinite = staticmethod(tf.math.is_finite)
    # Not array-API; the spec takes them through KERNELS (below).
    erf = staticmethod(tf.math.erf)
    silu = staticmethod(tf.nn.silu)  # fused x * sigmoid(x)

    @staticmethod
    def log_softmax_last(z) -> tf.Tensor:
        """z - logsumexp(z) over the last axis (:func:`flashcore.loss.log_softmax` takes it)."""
        return tf.nn.log_softmax(z, axis=-1)


#: TF's side of the backend contract (:mod:`flashcore.kernels`): the blocked softmax core of
#: :mod:`flashcore.tf.kernels` behind its guard, TF's erf, silu and log_softmax. Every namespace
#: of this class (``with_batch`` ones too) carries it.
KERNELS = Kernels(
    softmax=FastCore(kernels.softmax_core, kernels.softmax_unsupported),
    erf=Namespace.erf,
    silu=Namespace.silu,
    log_softmax_last=Namespace.log_softmax_last,
)
Namespace.kernels = KERNELS

xp = Namespace()
