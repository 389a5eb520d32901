"""Flax NNX modules: GAU, FLASH and the Transformer++ block (the LM is in :mod:`flashcore.jax.lm`,
their base in :mod:`flashcore.jax.module`).

Each module holds its parameters natively as ``nnx.Param`` under Flax-style names (kernels
``[in, out]``, norms ``scale`` / ``bias``, embeddings ``embedding``) and calls the spec through
:mod:`flashcore.jax.functional`. The map to canonical names is the explicit table
:func:`flashcore.jax.naming.naming_table` ``{canonical: (native_path, transpose)}``;
``load_canonical`` and ``to_canonical`` go through it and nothing else. Causal blocks decode
incrementally with ``decode_init`` / ``decode_step`` (:mod:`flashcore.jax.decode`).

    model = FLASH(cfg, rngs=nnx.Rngs(0))                   # or FLASH(cfg, params=canonical_dict)
    y = model(x, mask=None, segment_ids=None)              # (b, t, d) -> (b, t, d)
    model.load_canonical(params); params = model.to_canonical()

Dropout (``config.dropout`` > 0) follows NNX's ``nnx.Dropout``: modules start in training mode
(``deterministic=False``); ``model.eval()`` sets ``deterministic=True`` (exactly the deterministic
layer) and ``model.train()`` back. In training mode each call draws fresh keep-masks
(:func:`flashcore.jax.functional.dropout_masks`) from the module's ``dropout`` stream: forked from
``rngs`` at construction (``rngs=nnx.Rngs(0, dropout=1)``; without a ``dropout`` stream the
default one), or from ``dropout_rngs=`` when built from ``params=``; a call may pass
``deterministic=`` and ``rngs=`` (an Rngs, an RngStream or a key) that take precedence, or
``dropout=`` keep-masks to apply as given.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from flashcore.config import FlashConfig, TransformerConfig

from . import functional
from .decode import BlockDecoding
from .module import CLASSES, CanonicalModule, _batch_time, _native, _place

__all__ = ["GAU", "FLASH", "TransformerBlock"]


class _Layer(BlockDecoding, CanonicalModule):
    """A single layer or block: canonical params placed by the naming table."""

    def __init__(
        self,
        config,
        *,
        rngs=None,
        params=None,
        dtype=None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        params = self._build(config, rngs, params, dtype)
        for name, (path, transpose) in self.table.items():
            _place(self, path, _native(params[name], transpose))
        self._dropout_init(rngs, dropout_rngs, deterministic)

    def __call__(
        self,
        x: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
    ) -> jax.Array:
        """x: (b, t, d); mask: (b, t) bool; segment_ids: (b, t) ints -> (b, t, d). dropout:
        keep-masks to apply; deterministic / rngs: override the module's (see the module doc)."""
        masks = self._masks(*_batch_time(x), dropout, deterministic, rngs)
        return functional.apply(
            self.to_canonical(),
            x,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=getattr(self, "core", None),
            attn_core=getattr(self, "attn_core", None),
            dropout=masks,
        )


class _FlashLayer(_Layer):
    kind: str

    def __init__(
        self,
        config: FlashConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        core: Callable | None = None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, FlashConfig) or config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a FlashConfig with kind={self.kind!r}")
        if core is not None and self.kind != "flash":
            raise ValueError(
                f"core= replaces FLASH's mixed-chunk core; {type(self).__name__} has none"
            )
        super().__init__(
            config,
            rngs=rngs,
            params=params,
            dtype=dtype,
            dropout_rngs=dropout_rngs,
            deterministic=deterministic,
        )
        self.core = core


@CLASSES.register("gau")
class GAU(_FlashLayer):
    """Gated attention unit (FLASH-Quad). Params: norm, uvz (d -> 2e+s), qk (2, s), rel_bias, out."""

    kind = "gau"


@CLASSES.register("flash")
class FLASH(_FlashLayer):
    """Mixed-chunk FLASH layer. Params: norm, uvz (d -> 2e+s), qk (4, s), rel_bias, out.

    ``core``: the mixed-chunk attention core (None: :func:`flashcore.jax.kernels.flash_core`, the
    Pallas kernel on GPU / TPU where it applies, else the spec's).
    """

    kind = "flash"


@CLASSES.register("transformer")
class TransformerBlock(_Layer):
    """The Transformer++ baseline block. Params: attn_norm, attn.{qkv,out}, ffn_norm, ffn.{gate,up,down}.

    ``attn_core``: the softmax attention core (None: :func:`flashcore.jax.kernels.softmax_core`,
    ``jax.nn.dot_product_attention`` where its guard allows, else the spec's).
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        attn_core: Callable | None = None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, TransformerConfig):
            raise ValueError("TransformerBlock needs a TransformerConfig")
        super().__init__(
            config,
            rngs=rngs,
            params=params,
            dtype=dtype,
            dropout_rngs=dropout_rngs,
            deterministic=deterministic,
        )
        self.attn_core = attn_core
