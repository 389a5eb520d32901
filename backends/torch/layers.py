"""The layers as torch modules: GAU (FLASH-Quad), FLASH (mixed-chunk) and the Transformer++ block.

Each holds its parameters natively and calls the flashcore spec on ``flashcore.torch.xp`` (array_api_compat.torch plus torch's own silu and erf);
state_dict names and the canonical names they map to are in :mod:`flashcore.torch.naming`.

    layer = FLASH(FlashConfig(dim=512, causal=True), seed=0)  # weights = flashcore.init(cfg, 0)
    y = layer(x, mask=None, segment_ids=None)                 # (b, t, d) -> (b, t, d)

Dropout (``config.dropout`` > 0) follows torch: in ``module.train()`` mode (the default) each
forward draws fresh keep-masks (:mod:`flashcore.dropout`) from ``module.generator`` (a
``torch.Generator`` on the input's device; None: torch's global generator); ``module.eval()``
draws none and is exactly the deterministic layer. ``forward(..., dropout=masks)`` applies given
keep-masks in either mode.
"""

from __future__ import annotations

import torch
from torch import nn

import flashcore as fc
from flashcore import dropout as drop
from flashcore.ops import REL_BIASES

from . import kernels
from .decode import BlockDecoding
from .module import CLASSES, CanonicalModule, ParamGroup, norm_params
from .xp import xp

__all__ = ["GAU", "FLASH", "TransformerBlock", "check_no_dropout", "draw_dropout"]


def check_no_dropout(module: nn.Module, config) -> None:
    """For paths that do not apply dropout (context parallelism): refuse training with
    dropout rather than ignore it."""
    if module.training and config.dropout > 0:
        raise NotImplementedError(
            f"{type(module).__name__}: dropout={config.dropout} in training mode is not supported "
            "here (context parallel FLASH applies no dropout); use dropout=0.0 or module.eval()"
        )


def draw_dropout(module: nn.Module, config, b: int, t: int, device) -> dict | None:
    """Fresh keep-masks for one forward of ``module`` on (b, t) inputs (:mod:`flashcore.dropout`):
    None in eval mode or with dropout 0; drawn from ``module.generator`` (None: the global one)."""
    if not module.training or drop.rate(config) == 0.0:
        return None
    gen = getattr(module, "generator", None)

    def bernoulli(site: str, shape: tuple, keep: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=device) < keep

    return drop.draw(config, b, t, bernoulli)


class _FlashLayer(BlockDecoding, CanonicalModule):
    """Parameters shared by GAU and FLASH.

    ``seed`` sets the weights to ``flashcore.init(config, seed)`` (None: a seed from torch's
    generator); ``init=False`` leaves them unset, for a ``load_canonical`` next.
    """

    kind: str

    def __init__(
        self,
        config: fc.FlashConfig,
        *,
        seed: int | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        init: bool = True,
    ):
        if not isinstance(config, fc.FlashConfig) or config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a FlashConfig(kind={self.kind!r})")
        super().__init__(config)
        f = dict(device=device, dtype=dtype)
        d, e, s, h = config.dim, config.expanded_dim, config.qk_dim, config.num_heads
        self.norm = norm_params(config.norm, d, config.norm_affine, **f)
        bias = config.use_bias
        self.hidden = nn.Linear(d, 2 * e + s, bias=bias, **f)  # x -> [U | V | Z]: (2e + s, d)
        self.qk = ParamGroup({"gamma": (h, s), **({"beta": (h, s)} if bias else {})}, **f)
        bias = REL_BIASES[config.rel_bias]
        if bias.rows is not None:
            self.rel_bias = ParamGroup({"weight": (bias.rows(config),)}, **f)
        self.out = nn.Linear(e, d, bias=bias, **f)  # (d, e)
        self.generator: torch.Generator | None = None  # dropout's; None: torch's global one
        self._init(seed, init)

    def _masks(self, x: torch.Tensor, dropout):
        if dropout is not None:
            return dropout
        return draw_dropout(self, self.config, x.shape[0], x.shape[1], x.device)


@CLASSES.register("gau")
class GAU(_FlashLayer):
    """Gated attention unit (FLASH-Quad), ``FlashConfig(kind="gau")``."""

    kind = "gau"

    def forward(self, x: torch.Tensor, mask=None, segment_ids=None, dropout=None) -> torch.Tensor:
        """x: (b, t, d); mask: (b, t) bool, True = real; segment_ids: (b, t) ints -> (b, t, d).
        dropout: keep-masks {"attn", "out"} (None: drawn in train mode, see the module doc).

        On the CPU a call that :func:`flashcore.torch.kernels.layer_path` passes runs the whole
        layer as one autograd Function (:mod:`flashcore.torch.kernels.torch_layer`); every other
        call runs the spec, :func:`flashcore.gau` (with the blocked core where it applies)."""
        masks = self._masks(x, dropout)
        if kernels.layer_path(self, x, mask, segment_ids, masks) == "fused":
            return kernels.gau_layer(self, x, mask)
        return fc.gau(
            self.canonical_params(),
            x,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            xp=xp,
            dropout=masks,
        )


@CLASSES.register("flash")
class FLASH(_FlashLayer):
    """Mixed-chunk attention (FLASH), ``FlashConfig(kind="flash")``; the attention core goes
    through :func:`flashcore.torch.kernels.attention_core` (a fused kernel when one applies)."""

    kind = "flash"

    def forward(self, x: torch.Tensor, mask=None, segment_ids=None, dropout=None) -> torch.Tensor:
        """x: (b, t, d); mask: (b, t) bool, True = real; segment_ids: (b, t) ints -> (b, t, d).
        dropout: keep-masks {"attn", "out"} (None: drawn in train mode, see the module doc); with
        masks the attention core is the spec's (the fused cores apply no dropout).

        On the CPU a call that :func:`flashcore.torch.kernels.layer_path` passes runs the whole
        layer as one autograd Function (:mod:`flashcore.torch.kernels.torch_layer`); every other
        call runs the spec, :func:`flashcore.flash`, with the accelerated attention core."""
        masks = self._masks(x, dropout)
        if kernels.layer_path(self, x, mask, segment_ids, masks) == "fused":
            return kernels.flash_layer(self, x, mask)
        return fc.flash(
            self.canonical_params(),
            x,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            xp=xp,
            dropout=masks,
        )


@CLASSES.register("transformer")
class TransformerBlock(BlockDecoding, CanonicalModule):
    """The Transformer++ baseline block (pre-norm softmax attention with RoPE, then SwiGLU).

    ``seed`` / ``init``: as for :class:`FLASH`.
    """

    def __init__(
        self,
        config: fc.TransformerConfig,
        *,
        seed: int | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        init: bool = True,
    ):
        if not isinstance(config, fc.TransformerConfig):
            raise ValueError("TransformerBlock needs a TransformerConfig")
        super().__init__(config)
        f = dict(device=device, dtype=dtype, bias=False)
        d, ff = config.dim, config.hidden_dim
        self.attn_norm = norm_params(config.norm, d, device=device, dtype=dtype)
        self.attn = nn.ModuleDict(
            {"qkv": nn.Linear(d, 3 * d, **f), "out": nn.Linear(d, d, **f)}  # (3d, d), (d, d)
        )
        self.ffn_norm = norm_params(config.norm, d, device=device, dtype=dtype)
        self.ffn = nn.ModuleDict(
            {
                "gate": nn.Linear(d, ff, **f),  # (f, d)
                "up": nn.Linear(d, ff, **f),  # (f, d)
                "down": nn.Linear(ff, d, **f),  # (d, f)
            }
        )
        self.generator: torch.Generator | None = None  # dropout's; None: torch's global one
        self._init(seed, init)

    def forward(self, x: torch.Tensor, mask=None, segment_ids=None, dropout=None) -> torch.Tensor:
        """x: (b, t, d); mask: (b, t) bool, True = real; segment_ids: (b, t) ints -> (b, t, d).
        dropout: keep-masks {"attn", "attn_out", "ffn_out"} (None: drawn in train mode)."""
        if dropout is None:
            dropout = draw_dropout(self, self.config, x.shape[0], x.shape[1], x.device)
        return fc.transformer_block(
            self.canonical_params(),
            x,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            xp=xp,
            dropout=dropout,
        )
