"""Keras 3 layers (TensorFlow backend): GAU, FLASH and the Transformer++ block (the LM is in
:mod:`flashcore.tf.lm`, their base in :mod:`flashcore.tf.module`, decoding in
:mod:`flashcore.tf.decode`).

Each layer holds its weights as Keras variables under Keras-style names and computes its output
by calling the flashcore spec with the TF namespace :data:`flashcore.tf.xp.xp`; there is no second
copy of the math. The map to canonical names is the explicit table
:func:`flashcore.tf.naming.naming_table` ``{canonical: (native name, transpose)}``;
``load_canonical`` and ``to_canonical`` go through it and nothing else.

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

from typing import ClassVar

import keras
import tensorflow as tf

import flashcore as fc
from flashcore.config import FlashConfig, TransformerConfig

from .decode import BlockDecoding
from .module import CLASSES, CanonicalModule, no_autograph, run_static
from .xp import float32_compute

__all__ = ["FLASH", "GAU", "TransformerBlock"]


class _Block(BlockDecoding, CanonicalModule):
    """A layer or block mapping (b, t, d) -> (b, t, d) through ``fc.block_fn(config)``."""

    @no_autograph
    def call(self, inputs, mask=None, segment_ids=None, training=None, dropout=None):
        """inputs: (b, t, d) float; mask: (b, t) bool (True = real); segment_ids: (b, t) ints;
        dropout: keep-masks (None: drawn when ``training``, see the module doc)."""
        params, storage = float32_compute(self.canonical_params())  # bf16 on CPU: in float32
        fn = fc.block_fn(self.config)
        mask = None if mask is None else tf.convert_to_tensor(mask)  # the spec checks it is bool
        segment_ids = None if segment_ids is None else tf.convert_to_tensor(segment_ids)
        inputs = tf.convert_to_tensor(inputs)
        masks = self._masks(inputs, training, dropout)

        per_example = isinstance(self.config, TransformerConfig)

        def run(xp, x, m, s, d):
            if storage is not None:
                x = tf.cast(x, tf.float32)
            y = fn(params, x, config=self.config, mask=m, segment_ids=s, xp=xp, dropout=d)
            return y if storage is None else tf.cast(y, storage)

        return run_static(
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
@CLASSES.register("gau")
class GAU(_FlashBlock):
    """Gated attention unit (FLASH-Quad). (b, t, d) -> (b, t, d); weights: norm, uvz (d -> 2e+s),
    qk (2, s), rel_pos_bias, out (e -> d)."""

    kind = "gau"


@keras.saving.register_keras_serializable(package="flashcore")
@CLASSES.register("flash")
class FLASH(_FlashBlock):
    """Mixed-chunk FLASH layer. (b, t, d) -> (b, t, d); weights: norm, uvz (d -> 2e+s), qk (4, s),
    rel_pos_bias, out (e -> d)."""

    kind = "flash"


@keras.saving.register_keras_serializable(package="flashcore")
@CLASSES.register("transformer")
class TransformerBlock(_Block):
    """The Transformer++ baseline block. (b, t, d) -> (b, t, d); weights: attn_norm, qkv,
    attn_out, ffn_norm, ffn_gate / ffn_up / ffn_down. Its attention core is
    :func:`flashcore.tf.kernels.softmax_core` (a blocked, XLA-fused softmax attention behind a
    guard, else the spec's)."""

    config_type = TransformerConfig
