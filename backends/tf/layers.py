"""Keras 3 layers (TensorFlow backend): GAU, FLASH, the Transformer++ block and the LM.

Each layer holds its weights as Keras variables under Keras-style names and computes its output
by calling the flashcore spec with the TF namespace :data:`flashcore.tf.xp.xp`; there is no second
copy of the math. The map to canonical names is the explicit table :func:`naming_table`
``{canonical: (native name, transpose)}``; :meth:`~_Canonical.load_canonical` and
:meth:`~_Canonical.to_canonical` go through it and nothing else.

    layer = FLASH(FlashConfig(dim=512, causal=True))      # or FLASH(cfg, params=canonical_dict)
    y = layer(x, mask=None, segment_ids=None)              # (b, t, d) -> (b, t, d)
    logits = LM(LMConfig(...))(tokens)                     # (b, t) ints -> (b, t, v)
    layer.load_canonical(params); params = layer.to_canonical()

Masks follow Keras: the layers support masking, take the incoming Keras mask (from
``Embedding(mask_zero=True)`` or ``Masking``) as the key-padding mask (True = real position) and
pass it on; ``mask=`` and ``segment_ids=`` may also be given explicitly.

Bad input raises what the spec raises (:mod:`flashcore.checks`): a mask must be bool and token
ids integers (``keras.Input((T,), dtype="int32")``; nothing is cast behind the caller's back).

Shapes: the spec builds its masks, RoPE tables and chunk layout on the host from the static
sequence length, so the time dimension must be known when the layer is traced
(``keras.Input((T, ...))``); an unknown one raises ValueError. The batch dimension may be unknown
(Keras' ``fit`` traces its step with batch None): GAU / FLASH then run with
``xp.with_batch(tf.shape(x)[0])``, the Transformer++ block (whose spec computes b * heads in
Python) one example at a time under ``tf.map_fn``.

Precision: any Keras dtype policy. Variables are read in the compute dtype, so ``mixed_bfloat16``
(float32 variables, bfloat16 compute) equals bfloat16 weights; the spec then runs its attention core
in float32.

Dropout (``config.dropout`` > 0) follows Keras: with ``training=True`` (as ``fit`` passes it) each
call draws fresh keep-masks (:mod:`flashcore.dropout`) from the layer's
``keras.random.SeedGenerator(seed)``; ``training`` False or None applies none, exactly the
deterministic layer. ``dropout=`` keep-masks given to a call are applied as given.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

import flashcore as fc
from flashcore import decode, stream
from flashcore.config import FlashConfig, LMConfig, TransformerConfig

from .xp import xp

__all__ = ["naming_table", "FLASH", "GAU", "TransformerBlock", "LM", "block_class"]

Table = dict[str, tuple[str, bool]]

# The spec is plain Python with static control flow: AutoGraph has nothing to convert in it, and
# the methods that call it trace faster (and independently of source edits) when left alone.
_no_autograph = tf.autograph.experimental.do_not_convert

# Keras kernels are [in, out] like the canonical ones, so nothing is transposed; the flag is
# honoured all the same. Norm gains follow Keras: LayerNormalization gamma/beta, RMSNorm scale.
_FLASH: Table = {
    "hidden.kernel": ("uvz_kernel", False),
    "hidden.bias": ("uvz_bias", False),
    "qk.gamma": ("qk_gamma", False),
    "qk.beta": ("qk_beta", False),
    "rel_bias.weight": ("rel_pos_bias", False),
    "out.kernel": ("out_kernel", False),
    "out.bias": ("out_bias", False),
}
_TRANSFORMER: Table = {
    "attn.qkv.kernel": ("qkv_kernel", False),
    "attn.out.kernel": ("attn_out_kernel", False),
    "ffn.gate.kernel": ("ffn_gate_kernel", False),
    "ffn.up.kernel": ("ffn_up_kernel", False),
    "ffn.down.kernel": ("ffn_down_kernel", False),
}
_LM: Table = {
    "embed.weight": ("embeddings", False),
    "abs_pos.scale": ("abs_pos_scale", False),
    "head.kernel": ("head_kernel", False),
    "head.bias": ("head_bias", False),
}


def _norm_table(canonical: str, native: str, kind: str) -> Table:
    if kind == "layer":
        return {
            f"{canonical}weight": (f"{native}_gamma", False),
            f"{canonical}bias": (f"{native}_beta", False),
        }
    return {f"{canonical}{'scale' if kind == 'scale' else 'weight'}": (f"{native}_scale", False)}


def naming_table(config: FlashConfig | TransformerConfig | LMConfig) -> Table:
    """``{canonical name: (native name, transpose)}`` for exactly the names of ``param_spec``.

    LM block weights are ``block_{i}/<block native name>``.
    """
    if isinstance(config, LMConfig):
        table = _LM | _norm_table("final_norm.", "final_norm", config.final_norm_kind)
        block = naming_table(config.block)
        for i in range(config.num_layers):
            table |= {f"layers.{i}.{k}": (f"block_{i}/{n}", t) for k, (n, t) in block.items()}
    elif isinstance(config, TransformerConfig):
        table = _TRANSFORMER | _norm_table("attn_norm.", "attn_norm", config.norm)
        table |= _norm_table("ffn_norm.", "ffn_norm", config.norm)
    elif isinstance(config, FlashConfig):
        table = _FLASH | _norm_table("norm.", "norm", config.norm)
    else:
        raise TypeError(f"naming_table takes a flashcore config, got {type(config).__name__}")
    return {name: table[name] for name in fc.param_spec(config)}


def _run_static(fn, x, mask, segment_ids, *, out_dtype, per_example: bool = False, dropout=None):
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


class _Canonical(keras.layers.Layer):
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


class _Block(_Canonical):
    """A layer or block mapping (b, t, d) -> (b, t, d) through ``fc.block_fn(config)``."""

    @_no_autograph
    def call(self, inputs, mask=None, segment_ids=None, training=None, dropout=None):
        """inputs: (b, t, d) float; mask: (b, t) bool (True = real); segment_ids: (b, t) ints;
        dropout: keep-masks (None: drawn when ``training``, see the module doc)."""
        params = self.canonical_params()
        fn = fc.block_fn(self.config)
        mask = None if mask is None else tf.convert_to_tensor(mask)  # the spec checks it is bool
        segment_ids = None if segment_ids is None else tf.convert_to_tensor(segment_ids)
        inputs = tf.convert_to_tensor(inputs)
        masks = self._masks(inputs, training, dropout)

        def run(xp, x, m, s, d):
            return fn(params, x, config=self.config, mask=m, segment_ids=s, xp=xp, dropout=d)

        per_example = isinstance(self.config, TransformerConfig)
        return _run_static(
            run,
            inputs,
            mask,
            segment_ids,
            out_dtype=self.compute_dtype,
            per_example=per_example,
            dropout=masks,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    # ---- incremental decoding (causal blocks; flashcore.decode) ----------------------------
    def decode_init(self, batch: int, capacity: int | None = None) -> dict[str, tf.Tensor]:
        """An empty decoding state for ``batch`` sequences (FLASH's state, or a GAU /
        Transformer++ key/value cache of ``capacity`` positions; see :mod:`flashcore.decode`)."""
        dtype = tf.as_dtype(self.compute_dtype)
        state = decode.decode_init(self.config, batch, capacity=capacity, xp=xp, dtype=dtype)
        return _decode_state(state)

    @_no_autograph
    def decode_step(self, x_t, state: dict) -> tuple[tf.Tensor, dict]:
        """One position: x_t (b, d) -> (out (b, d), new state), the forward's row at this
        position (for GAU: the last row of the forward on the prefix). Wrap in ``tf.function``
        to compile one step for every position."""
        x_t = tf.cast(x_t, self.compute_dtype)
        return decode.decode_step(self.canonical_params(), x_t, state, config=self.config, xp=xp)


class _FlashBlock(_Block):
    config_type = FlashConfig
    kind: ClassVar[str]

    def _check_config(self, config) -> None:
        super()._check_config(config)
        if config.kind != self.kind:
            raise ValueError(
                f"{type(self).__name__} needs FlashConfig(kind={self.kind!r}), got {config.kind!r}"
            )


@keras.saving.register_keras_serializable(package="flashcore")
class GAU(_FlashBlock):
    """Gated attention unit (FLASH-Quad). (b, t, d) -> (b, t, d); weights: norm, uvz (d -> 2e+s),
    qk (2, s), rel_pos_bias, out (e -> d)."""

    kind = "gau"


@keras.saving.register_keras_serializable(package="flashcore")
class FLASH(_FlashBlock):
    """Mixed-chunk FLASH layer. (b, t, d) -> (b, t, d); weights: norm, uvz (d -> 2e+s), qk (4, s),
    rel_pos_bias, out (e -> d)."""

    kind = "flash"


@keras.saving.register_keras_serializable(package="flashcore")
class TransformerBlock(_Block):
    """The Transformer++ baseline block. (b, t, d) -> (b, t, d); weights: attn_norm, qkv,
    attn_out, ffn_norm, ffn_gate / ffn_up / ffn_down."""

    config_type = TransformerConfig


def block_class(config: FlashConfig | TransformerConfig | LMConfig) -> type[_Canonical]:
    """The layer class of a config: FLASH, GAU, TransformerBlock or LM."""
    if isinstance(config, LMConfig):
        return LM
    if isinstance(config, TransformerConfig):
        return TransformerBlock
    return FLASH if config.kind == "flash" else GAU


def _decode_state(state: dict) -> dict:
    # TF does not promote int32 with int64, and the spec compares pos with int64 host constants.
    return {**state, "pos": tf.cast(state["pos"], tf.int64)}


@keras.saving.register_keras_serializable(package="flashcore")
class LM(_Canonical):
    """A causal language model: tokens (b, t) ints -> logits (b, t, v).

    Sub-layers ``blocks[i]`` (named ``block_{i}``) hold the block weights; the LM holds
    ``embeddings`` (v, d), ``abs_pos_scale`` (1,) with scaled sinusoidal positions, the final norm
    and, as configured, ``head_kernel`` (d, v) and ``head_bias`` (v,). The forward is one call of
    ``fc.lm_logits``.
    """

    config_type = LMConfig

    def _create_weights(self, params: dict) -> None:
        cls = block_class(self.config.block)
        self.blocks = [
            cls(
                self.config.block,
                params=fc.subtree(params, f"layers.{i}."),
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.config.num_layers)
        ]
        super()._create_weights(params)

    @classmethod
    def from_pretrained(cls, name_or_path, *, dtype: str | None = None, **hub) -> LM:
        """An LM from a pretrained directory (config.json + canonical model.safetensors, as
        transformers' ``save_pretrained`` via flashcore.torch.hf and ``flashcore export`` write
        it) or a Hub id (``hub``: see :func:`flashcore.pretrained.resolve`). ``dtype``: a Keras
        dtype or policy (default: the file's dtype). Needs no transformers."""
        from flashcore import pretrained
        from flashcore.weightmeta import common_dtype

        params, config = pretrained.load(name_or_path, **hub)
        if dtype is None:
            dtype = common_dtype(params).name
        return cls(config, params=params, dtype=dtype)

    def native_variables(self) -> dict[str, keras.Variable]:
        out = dict(self._native)
        for i, block in enumerate(self.blocks):
            out |= {f"block_{i}/{k}": v for k, v in block.native_variables().items()}
        return out

    @_no_autograph
    def call(self, inputs, mask=None, segment_ids=None, training=None, dropout=None):
        """inputs: (b, t) token ids; mask: (b, t) bool; segment_ids: (b, t) ints -> (b, t, v).
        dropout: keep-masks ``layers.{i}.<site>`` (None: drawn when ``training``)."""
        params = self.canonical_params()
        tokens = tf.convert_to_tensor(inputs)  # ints (checked by the spec): Input(dtype="int32")
        mask = None if mask is None else tf.convert_to_tensor(mask)  # the spec checks it is bool
        segment_ids = None if segment_ids is None else tf.convert_to_tensor(segment_ids)
        masks = self._masks(tokens, training, dropout)

        def run(xp, t, m, s, d):
            return fc.lm_logits(
                params, t, config=self.config, mask=m, segment_ids=s, xp=xp, dropout=d
            )

        per_example = isinstance(self.config.block, TransformerConfig)
        return _run_static(
            run,
            tokens,
            mask,
            segment_ids,
            out_dtype=self.compute_dtype,
            per_example=per_example,
            dropout=masks,
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:2], self.config.vocab_size)

    def decode_init(self, batch: int, capacity: int | None = None) -> dict:
        """An empty decoding state for ``batch`` sequences (``capacity``: positions of a GAU /
        Transformer++ cache; see :func:`flashcore.decode.lm_decode_init`)."""
        dtype = tf.as_dtype(self.compute_dtype)
        state = decode.lm_decode_init(self.config, batch, capacity=capacity, xp=xp, dtype=dtype)
        return {k: _decode_state(v) for k, v in state.items()}

    @_no_autograph
    def decode_step(self, tokens_t, state: dict) -> tuple[tf.Tensor, dict]:
        """One token per row: tokens_t (b,) ints -> (logits (b, v), new state).

        Wrap in ``tf.function(jit_compile=True)`` to compile one step for every position.
        """
        return decode.lm_decode_step(
            self.canonical_params(), tokens_t, state, config=self.config, xp=xp
        )

    @_no_autograph
    def prefill(
        self, tokens, *, piece: int = 4096, state: dict | None = None, last_only: bool = False
    ) -> tuple[tf.Tensor, dict]:
        """Streamed prefill of a causal FLASH LM (:func:`flashcore.stream.lm_prefill`): tokens
        (b, T) ints, ``piece`` positions (a multiple of C) at a time, each piece one
        ``tf.function`` call (traced once per piece length) carrying the decoding state.

        -> (logits (b, T, v), or the last position's (b, v) with ``last_only``; a decoding state
        for :meth:`decode_step`, or ``state=`` to stream on).
        """
        params = self.canonical_params()
        tokens = tf.convert_to_tensor(tokens)
        if state is None:
            state = self.decode_init(int(tokens.shape[0]))
        opts = dict(config=self.config, xp=xp, last_only=last_only)
        piece_fn = tf.function(lambda t, s: stream.prefill_piece(params, t, s, **opts))
        return stream.lm_prefill(
            params,
            tokens,
            config=self.config,
            piece=piece,
            state=state,
            last_only=last_only,
            xp=xp,
            piece_fn=piece_fn,
        )
