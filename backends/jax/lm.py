"""The language model as a Flax NNX module: embedding, blocks, final norm, head (tied by default).

The forward and the loss are :mod:`flashcore.jax.functional`'s ``logits`` / ``loss`` on the
module's canonical parameters; dropout as in :mod:`flashcore.jax.layers` (masks
``layers.{i}.<site>``); decoding (``decode_init`` / ``decode_step`` / ``prefill`` /
``generate``) is :class:`flashcore.jax.decode.LMDecoding`.

    lm = LM(LMConfig(block=FlashConfig(dim=256, causal=True), vocab_size=256), rngs=nnx.Rngs(0))
    logits = lm(tokens)                       # (b, t) ints -> (b, t, v)
    loss = lm.loss(tokens, targets)           # mean next-token cross-entropy, nats
    lm = LM.from_pretrained("dir")            # config.json + canonical model.safetensors
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

import flashcore as fc
from flashcore.config import LMConfig

from . import functional
from .decode import LMDecoding
from .module import CLASSES, CanonicalModule, _batch_time, _native, _place, block_class

__all__ = ["LM"]


@CLASSES.register("lm")
class LM(LMDecoding, CanonicalModule):
    """Causal LM: embed (v, d), ``layers`` (nnx.List of blocks), final_norm, head (untied only),
    abs_pos (scaled sinusoidal only). ``core``: FLASH layers' mixed-chunk core, as in FLASH;
    ``attn_core``: Transformer++ blocks' softmax core, as in TransformerBlock."""

    def __init__(
        self,
        config: LMConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        core: Callable | None = None,
        attn_core: Callable | None = None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, LMConfig):
            raise ValueError("LM needs an LMConfig")
        params = self._build(config, rngs, params, dtype)
        block = block_class(config.block)
        self.layers = nnx.List(
            [
                block(config.block, params=fc.subtree(params, f"layers.{i}."))
                for i in range(config.num_layers)
            ]
        )
        for name, (path, transpose) in self.table.items():
            if not name.startswith("layers."):
                _place(self, path, _native(params[name], transpose))
        self.core = core
        self.attn_core = attn_core
        self._dropout_init(rngs, dropout_rngs, deterministic)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        *,
        dtype=None,
        core: Callable | None = None,
        attn_core: Callable | None = None,
        **hub,
    ):
        """An LM from a pretrained directory (config.json + canonical model.safetensors, as
        transformers' ``save_pretrained`` via flashcore.torch.hf and ``flashcore export`` write
        it) or a Hub id (``hub``: see :func:`flashcore.pretrained.resolve`). ``dtype``: cast the
        weights (default: the file's). Needs no transformers."""
        from flashcore import pretrained

        params, config = pretrained.load(name_or_path, **hub)
        return cls(config, params=params, dtype=dtype, core=core, attn_core=attn_core)

    def __call__(
        self,
        tokens: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
        token_type_ids=None,
    ) -> jax.Array:
        """tokens: (b, t) ints -> logits (b, t, v). dropout / deterministic / rngs: as for a
        layer; the masks are ``layers.{i}.<site>``. token_type_ids: (b, t) ints or None."""
        return functional.logits(
            self.to_canonical(),
            tokens,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=self.core,
            attn_core=self.attn_core,
            dropout=self._masks(*_batch_time(tokens), dropout, deterministic, rngs),
            token_type_ids=token_type_ids,
        )

    def hidden_states(self, tokens: jax.Array, mask=None, token_type_ids=None) -> jax.Array:
        """The last hidden states (after the final norm, before the head), no dropout:
        tokens (b, t) ints -> (b, t, d)."""
        return functional.hidden(
            self.to_canonical(),
            tokens,
            config=self.config,
            mask=mask,
            token_type_ids=token_type_ids,
        )

    def loss(
        self,
        inputs: jax.Array,
        targets: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
        token_type_ids=None,
    ):
        """Mean next-token cross-entropy (nats) of ``targets`` given ``inputs``, both (b, t): ().
        dropout / deterministic / rngs: as for :meth:`__call__`."""
        return functional.loss(
            self.to_canonical(),
            inputs,
            targets,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=self.core,
            attn_core=self.attn_core,
            dropout=self._masks(*_batch_time(inputs), dropout, deterministic, rngs),
            token_type_ids=token_type_ids,
        )
