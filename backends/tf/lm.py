"""The language model as a Keras 3 layer: embedding, blocks, final norm, head (tied by default).

The forward is one call of ``flashcore.lm_logits`` on the TF namespace; decoding
(``decode_init`` / ``decode_step`` / ``prefill``) is :class:`flashcore.tf.decode.LMDecoding`.
Masks, shapes, precision and dropout as in :mod:`flashcore.tf.layers`.

    lm = LM(LMConfig(block=FlashConfig(dim=256, causal=True), vocab_size=256))
    logits = lm(tokens)                                    # (b, t) ints -> (b, t, v)
    lm = LM.from_pretrained("dir")                         # config.json + canonical safetensors
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

import flashcore as fc
from flashcore.config import LMConfig, TransformerConfig

from .decode import LMDecoding
from .loss import chunked_loss
from .module import CLASSES, CanonicalModule, block_class, no_autograph, run_static
from .xp import float32_compute, xp

__all__ = ["LM", "remat"]


def remat(fn, p: dict, x: tf.Tensor) -> tf.Tensor:
    """Activation checkpointing of one block (the ``remat`` of :func:`flashcore.lm_hidden`):
    ``fn(p, x)`` through ``tf.recompute_grad``, which keeps only the block's inputs and
    recomputes its activations in the backward pass. The weights ``p`` go in as arguments (the
    gradient reaches arguments and variables, not captured tensors). x: (b, t, d) -> (b, t, d)."""
    names = list(p)

    def flat(x, *values):
        return fn(dict(zip(names, values)), x)

    return tf.recompute_grad(flat)(x, *(p[n] for n in names))


@keras.saving.register_keras_serializable(package="flashcore")
@CLASSES.register("lm")
class LM(LMDecoding, CanonicalModule):
    """A causal language model: tokens (b, t) ints -> logits (b, t, v).

    Sub-layers ``blocks[i]`` (named ``block_{i}``) hold the block weights; the LM holds
    ``embeddings`` (v, d), ``abs_pos_scale`` (1,) with scaled sinusoidal positions, the final norm
    and, as configured, ``head_kernel`` (d, v) and ``head_bias`` (v,). The forward is one call of
    ``fc.lm_logits``, Transformer++ blocks on :func:`flashcore.tf.kernels.softmax_core`.
    """

    config_type = LMConfig

    #: recompute each block's activations in the backward pass of a training call (:func:`remat`)
    checkpoint_activations = False

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

    @no_autograph
    def call(
        self, inputs, mask=None, segment_ids=None, training=None, dropout=None, token_type_ids=None
    ):
        """inputs: (b, t) token ids; mask: (b, t) bool; segment_ids: (b, t) ints -> (b, t, v).
        dropout: keep-masks ``layers.{i}.<site>`` (None: drawn when ``training``).
        token_type_ids: (b, t) ints or None (type 0; ``config.type_vocab_size`` > 0)."""
        return self._run(fc.lm_logits, inputs, mask, segment_ids, training, dropout, token_type_ids)

    @no_autograph
    def hidden_states(self, inputs, mask=None, token_type_ids=None):
        """The last hidden states (after the final norm, before the head), no dropout:
        inputs (b, t) token ids -> (b, t, d)."""
        return self._run(fc.lm_hidden, inputs, mask, None, False, None, token_type_ids)

    def _run(self, spec_fn, inputs, mask, segment_ids, training, dropout, token_type_ids):
        params, storage = float32_compute(self.canonical_params())  # bf16 on CPU: in float32
        tokens = tf.convert_to_tensor(inputs)  # ints (checked by the spec): Input(dtype="int32")
        mask = None if mask is None else tf.convert_to_tensor(mask)  # the spec checks it is bool
        segment_ids = None if segment_ids is None else tf.convert_to_tensor(segment_ids)
        types = None if token_type_ids is None else tf.convert_to_tensor(token_type_ids)
        masks = self._masks(tokens, training, dropout)
        per_example = isinstance(self.config.block, TransformerConfig)
        if types is not None and per_example and tokens.shape[0] is None:
            raise ValueError(
                "token_type_ids with Transformer++ blocks need a static batch size in flashcore.tf"
            )

        checkpoint = remat if training and self.checkpoint_activations else None

        def run(xp, t, m, s, d):
            y = spec_fn(
                params,
                t,
                config=self.config,
                mask=m,
                segment_ids=s,
                xp=xp,
                dropout=d,
                token_type_ids=types,
                remat=checkpoint,
            )
            return y if storage is None else tf.cast(y, storage)

        return run_static(
            run,
            tokens,
            mask,
            segment_ids,
            out_dtype=self.compute_dtype,
            per_example=per_example,
            dropout=masks,
        )

    @no_autograph
    def loss(
        self,
        inputs,
        targets,
        mask=None,
        segment_ids=None,
        loss_mask=None,
        training=None,
        dropout=None,
        grad: bool = True,
        token_type_ids=None,
    ):
        """Mean next-token cross-entropy (nats) of ``targets`` (b, t) given ``inputs`` (b, t),
        counted at real positions of ``mask`` and of ``loss_mask`` ((b, t) bool each, or None):
        ``flashcore.lm_loss``'s value, with the head and the cross-entropy run chunk by chunk
        (:func:`flashcore.tf.loss.chunked_loss`; the (b, t, v) logits are never built whole) ->
        () float32 or wider. ``grad=False`` skips the chunks' gradients (evaluation: the loss
        is then not differentiable). training / dropout / token_type_ids: as :meth:`call`."""
        params = self.canonical_params()
        targets = tf.convert_to_tensor(targets)
        tokens = tf.convert_to_tensor(inputs)
        h = self._run(fc.lm_hidden, tokens, mask, segment_ids, training, dropout, token_type_ids)
        if tuple(tokens.shape) != tuple(targets.shape):
            raise ValueError(
                f"inputs {tuple(tokens.shape)} and targets {tuple(targets.shape)} must have one shape"
            )
        mask = None if mask is None else tf.convert_to_tensor(mask)
        loss_mask = None if loss_mask is None else tf.convert_to_tensor(loss_mask)
        ns = xp if tokens.shape[0] is not None else xp.with_batch(tf.shape(tokens)[0])
        return fc.loss.linear_cross_entropy(
            params,
            h,
            targets,
            fc.loss.counted(mask, loss_mask),
            config=self.config,
            xp=ns,
            core=functools.partial(chunked_loss, grad=grad),
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:2], self.config.vocab_size)
