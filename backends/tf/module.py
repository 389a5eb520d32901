"""The base of every flashcore.tf layer: Keras weights from canonical params, the canonical <->
native round trip (through :func:`flashcore.tf.naming.naming_table` and nothing else), dropout
keep-masks, the Keras config, and :func:`run_static` (the spec on static shapes under Keras'
unknown batch; the rules are the "Shapes" paragraph of :mod:`flashcore.tf.layers`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

import flashcore as fc
from flashcore.config import ClassRegistry

from .naming import Table, naming_table
from .xp import xp

__all__ = ["CanonicalModule", "no_autograph", "run_static", "block_class", "CLASSES"]

# The spec is plain Python with static control flow: AutoGraph has nothing to convert in it, and
# the methods that call it trace faster (and independently of source edits) when left alone.
no_autograph = tf.autograph.experimental.do_not_convert

#: The module class of each kind of config; FLASH, GAU and TransformerBlock (layers.py) and LM
#: (lm.py) register themselves.
CLASSES = ClassRegistry()


def block_class(config) -> type[CanonicalModule]:
    """The module class of a config: FLASH, GAU, TransformerBlock or LM (the finder every
    backend has under this name)."""
    return CLASSES(config)


def run_static(fn, x, mask, segment_ids, *, out_dtype, per_example: bool = False, dropout=None):
    """fn(xp, x, mask, segment_ids, dropout) where the spec sees static shapes.

    x: (b, t, ...); mask / segment_ids: (b, t) or None; dropout: {site: (b, ...) bool} or None.
    t must be known at trace time. With b unknown, ``None`` in the spec's shapes stands for the
    batch size (:meth:`Namespace.with_batch`), or, with ``per_example`` (the Transformer++ block,
    whose spec multiplies b by the head count), fn runs on one example at a time under
    ``tf.map_fn``.
    """
    if x.shape.rank is None or x.shape.rank < 2 or x.shape[1] is None:
        raise ValueError(
            f"flashcore.tf needs a static sequence length, got input shape {x.shape}: the spec "
            "builds masks and chunk layouts from T on the host; use keras.Input((T, ...)) or pad "
            "to a fixed T (a dynamic time dimension is not supported)"
        )
    if x.shape[0] is not None:
        return fn(xp, x, mask, segment_ids, dropout)
    if not per_example:
        return fn(xp.with_batch(tf.shape(x)[0]), x, mask, segment_ids, dropout)
    present = tuple(a for a in (x, mask, segment_ids) if a is not None)
    if dropout is not None:
        present += (dropout,)

    def one(example):
        it = iter(example)
        x1, m1, s1 = (None if a is None else next(it)[None] for a in (x, mask, segment_ids))
        d1 = None if dropout is None else {k: v[None] for k, v in next(it).items()}
        return fn(xp, x1, m1, s1, d1)[0]

    return tf.map_fn(one, present, fn_output_signature=tf.TensorSpec(None, out_dtype))


def _to_host(params: dict) -> dict[str, np.ndarray]:
    """{name: NumPy array} for every value; ValueError naming every value that cannot be read
    (and nothing returned), so that a bad value is found before any weight is made or changed."""
    out, errors = {}, []
    for name, value in params.items():
        try:
            out[name] = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as err:
            errors.append(f"{name}: cannot be converted to an array: {err}")
    if errors:
        raise ValueError("parameters cannot be converted: " + "; ".join(errors))
    return out


class CanonicalModule(keras.layers.Layer):
    """Shared: weights from canonical params, the canonical <-> native round trip, Keras config."""

    config_type: ClassVar[type] = object

    def __init__(self, config, *, seed: int = 0, params: dict | None = None, **kwargs):
        """config: a flashcore config (or its ``to_dict()``); seed: for ``fc.init`` when ``params``
        (canonical name -> array, checked) is not given; kwargs: Keras ``name``, ``dtype``, ...
        """
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = fc.config_from_dict(config)
        self._check_config(config)
        self.config = config
        self.seed = seed
        self.supports_masking = True
        if fc.dropout.rate(config) > 0:  # dropout's generator (training=True calls only)
            self.seed_generator = keras.random.SeedGenerator(seed)
        if params is None:
            params = fc.init(config, seed, np.float32)
        fc.check_params(params, config)
        self._native = {}
        self._create_weights(_to_host(params))
        self.built = True

    def _check_config(self, config) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_type.__name__}, got {type(config).__name__}"
            )

    def _create_weights(self, params: dict) -> None:
        for name, (native, transpose) in naming_table(self.config).items():
            if "/" in native:  # a sub-layer's weight (LM blocks): created by that sub-layer
                continue
            value = np.asarray(params[name])
            value = value.T if transpose else value
            self._native[native] = self.add_weight(
                name=native,
                shape=value.shape,
                initializer=lambda shape, dtype=None, v=value: tf.cast(v, dtype),
            )

    # ---- canonical weights ----------------------------------------------------------------
    @property
    def table(self) -> Table:
        """The naming table of this layer's config (see :func:`naming_table`)."""
        return naming_table(self.config)

    def native_variables(self) -> dict[str, keras.Variable]:
        """{native name: variable} for every weight of the table."""
        return dict(self._native)

    def to_canonical(self) -> dict[str, np.ndarray]:
        """{canonical name: NumPy array} in the variables' dtype (bfloat16 via ml_dtypes)."""
        native = self.native_variables()
        out = {}
        for name, (path, transpose) in self.table.items():
            value = native[path].numpy()  # (not convert_to_numpy: np.array(x) warns on a Variable)
            out[name] = value.T if transpose else value
        return out

    def load_canonical(self, params: dict) -> None:
        """Set every weight from {canonical name: array}, cast to the variables' dtype.

        Raises ValueError listing missing / unexpected names, bad shapes, non-floating values or
        values that cannot be cast; every value is checked and cast first, so then nothing changes.
        """
        fc.check_params(params, self.config)
        host = _to_host(params)
        native = self.native_variables()
        new = []
        for name, (path, transpose) in self.table.items():
            var = native[path]
            value = tf.cast(tf.convert_to_tensor(host[name]), var.dtype)
            value = tf.transpose(value) if transpose else value
            if tuple(value.shape) != tuple(var.shape):  # unreachable unless the table is wrong
                raise ValueError(f"{name} -> {path}: shape {tuple(value.shape)} != {var.shape}")
            new.append((var, value))
        for var, value in new:
            var.assign(value)

    def canonical_params(self) -> dict[str, tf.Tensor]:
        """{canonical name: tensor} read in the compute dtype (what the spec is called with)."""
        native = self.native_variables()
        out = {}
        for name, (path, transpose) in self.table.items():
            value = tf.cast(tf.convert_to_tensor(native[path].value), self.compute_dtype)
            out[name] = tf.transpose(value) if transpose else value
        return out

    # ---- dropout --------------------------------------------------------------------------
    def _masks(self, x, training, dropout) -> dict | None:
        """The keep-masks of one call on x (b, t, ...): ``dropout`` if given, fresh ones from the
        seed generator when ``training`` and p > 0, else None."""
        if dropout is not None:
            return {k: tf.convert_to_tensor(v) for k, v in dropout.items()}
        if not training or fc.dropout.rate(self.config) == 0.0:
            return None
        b = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]

        def bernoulli(site: str, shape: tuple, keep: float) -> tf.Tensor:
            u = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
            return u < keep

        return fc.dropout.draw(self.config, b, x.shape[1], bernoulli)

    # ---- Keras plumbing -------------------------------------------------------------------
    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}
