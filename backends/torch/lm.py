"""The language model as a torch module: embedding, blocks, final norm, head (tied by default).

The forward and the loss are flashcore.lm_logits / lm_loss, each block through its own module
(``blocks=self.layers``: the fused FLASH / GAU layer where it applies) except in a call with
dropout keep-masks, which runs the spec's block functions; decoding (``decode_init`` /
``decode_step`` / ``prefill`` / ``generate``) is :class:`flashcore.torch.decode.LMDecoding`.

    lm = LM(LMConfig(block=FlashConfig(dim=256, causal=True), vocab_size=256), seed=0)
    logits = lm(tokens)                       # (b, t) ints -> (b, t, v)
    loss = lm.loss(tokens, targets)           # mean next-token cross-entropy, nats (chunked)
    out = lm.generate(prompt, 100, top_k=40, seed=0)  # (b, t0) -> (b, t0 + 100)
    lm = LM.from_pretrained("dir")            # config.json + canonical model.safetensors

Dropout as in :mod:`flashcore.torch.layers`: train mode draws keep-masks ``layers.{i}.<site>``
from ``lm.generator`` (None: torch's global generator), eval mode none.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

import flashcore as fc

from . import io
from .decode import LMDecoding
from .layers import draw_dropout
from .loss import chunked_loss
from .module import CLASSES, CanonicalModule, ParamGroup, block_class, norm_params
from .xp import xp

__all__ = ["LM", "remat"]


def remat(fn, p: dict, x: torch.Tensor) -> torch.Tensor:
    """Activation checkpointing of one block (the ``remat`` of :func:`flashcore.lm_hidden`):
    ``fn(p, x)`` through ``torch.utils.checkpoint`` (non-reentrant), which keeps only the block's
    input x (b, t, d) and recomputes its activations in the backward pass -> (b, t, d)."""
    return torch.utils.checkpoint.checkpoint(fn, p, x, use_reentrant=False)


@CLASSES.register("lm")
class LM(LMDecoding, CanonicalModule):
    """A causal LM over ``LMConfig``; ``layers[i]`` is a FLASH, GAU or TransformerBlock module.

    ``seed`` initialises the whole model as ``flashcore.init(config, seed)`` (None: a seed from
    torch's generator); ``init=False`` leaves the parameters unset, for a ``load_canonical`` next.
    The blocks get no initialisation of their own: the LM's names (``layers.{i}.…``) seed them.
    """

    def __init__(
        self,
        config: fc.LMConfig,
        *,
        seed: int | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        init: bool = True,
    ):
        if not isinstance(config, fc.LMConfig):
            raise ValueError("LM needs an LMConfig")
        super().__init__(config)
        f = dict(device=device, dtype=dtype)
        d, v, block = config.dim, config.vocab_size, config.block
        self.embed = nn.Embedding(v, d, **f)  # (v, d)
        if config.type_vocab_size:
            self.type_embed = nn.Embedding(config.type_vocab_size, d, **f)  # (n, d)
        affine = getattr(block, "norm_affine", True)
        self.embed_norm = norm_params(config.embed_norm, d, affine, **f)
        if config.abs_pos == "scaled_sinusoidal":
            self.abs_pos = ParamGroup({"scale": (1,)}, **f)
        self.layers = nn.ModuleList(
            block_class(block)(block, init=False, **f) for _ in range(config.num_layers)
        )
        self.final_norm = norm_params(config.final_norm_kind, d, affine, **f)
        if not config.tie_embeddings:
            self.head = nn.Linear(d, v, bias=config.head_bias, **f)  # (v, d), (v,)
        elif config.head_bias:
            self.head = ParamGroup({"bias": (v,)}, **f)  # the weight is embed.weight
        self.generator: torch.Generator | None = None  # dropout's; None: torch's global one
        # recompute each block's activations in the backward pass (:func:`remat`)
        self.checkpoint_activations = False
        self._init(seed, init)

    def _masks(self, tokens: torch.Tensor, dropout):
        if dropout is not None:
            return dropout
        return draw_dropout(self, self.config, tokens.shape[0], tokens.shape[1], tokens.device)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, **hub) -> LM:
        """An LM from a pretrained directory (config.json + canonical model.safetensors, as
        ``save_pretrained`` and ``flashcore export`` write it) or a Hub id (``hub``: revision,
        cache_dir, local_files_only, token; see :func:`flashcore.pretrained.resolve`), in the
        file's dtype. Needs no transformers."""
        from flashcore import pretrained

        directory, path = pretrained.weights_file(name_or_path, **hub)
        lm = io.load_canonical(path, device=device)
        if not isinstance(lm, cls):
            raise fc.io.WeightFileError(f"{path}: holds a {type(lm).__name__}, not an LM")
        pretrained.check_config_json(directory, lm.config)
        return lm

    def forward(
        self, tokens: torch.Tensor, mask=None, segment_ids=None, dropout=None, token_type_ids=None
    ) -> torch.Tensor:
        """tokens: (b, t) ints; mask: (b, t) bool, True = real; segment_ids: (b, t) ints
        -> logits (b, t, v). dropout: keep-masks (None: drawn in train mode). token_type_ids:
        (b, t) ints (``config.type_vocab_size`` > 0; None: type 0). The head
        (``flashcore.lm.head``) of :meth:`hidden`: ``flashcore.lm_logits``."""
        h = self.hidden(tokens, mask, segment_ids, dropout, token_type_ids)
        return fc.lm.head(self.canonical_params(), h, self.config, xp)

    def hidden_states(self, tokens: torch.Tensor, mask=None, token_type_ids=None) -> torch.Tensor:
        """The last hidden states (after the final norm, before the head), without dropout:
        tokens (b, t) ints -> (b, t, d) (``flashcore.lm_hidden``)."""
        kw = self._spec_kw(tokens, None) | {"dropout": None}
        return fc.lm_hidden(
            self.canonical_params(), tokens, mask=mask, token_type_ids=token_type_ids, **kw
        )

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        mask=None,
        segment_ids=None,
        dropout=None,
        loss_mask=None,
        token_type_ids=None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of ``targets`` (b, t) given ``tokens`` (b, t),
        counted at real positions of ``mask`` (and of ``loss_mask`` (b, t) bool, when given):
        ``flashcore.lm_loss`` with the head and the cross-entropy run chunk by chunk
        (:func:`flashcore.torch.loss.chunked_loss`). Returns a 0-d tensor. dropout: keep-masks
        (None: drawn in train mode)."""
        return fc.lm_loss(
            self.canonical_params(),
            tokens,
            targets,
            mask=mask,
            segment_ids=segment_ids,
            loss_mask=loss_mask,
            token_type_ids=token_type_ids,
            loss_core=chunked_loss,
            **self._spec_kw(tokens, dropout),
        )

    def hidden(
        self, tokens: torch.Tensor, mask=None, segment_ids=None, dropout=None, token_type_ids=None
    ) -> torch.Tensor:
        """The final hidden states (``flashcore.lm_hidden``): tokens (b, t) ints -> (b, t, d);
        arguments as :meth:`forward`. ``forward`` is ``flashcore.lm.head`` of these."""
        return fc.lm_hidden(
            self.canonical_params(),
            tokens,
            mask=mask,
            segment_ids=segment_ids,
            token_type_ids=token_type_ids,
            **self._spec_kw(tokens, dropout),
        )

    def _spec_kw(self, tokens: torch.Tensor, dropout) -> dict:
        """The spec's arguments of every LM call: config, namespace (with the fast cores), this call's
        dropout keep-masks and the block modules."""
        return dict(
            config=self.config,
            xp=xp,
            dropout=self._masks(tokens, dropout),
            blocks=self.layers,
            remat=remat if self.checkpoint_activations and torch.is_grad_enabled() else None,
        )

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
        """Mean cross-entropy (nats) of the head on final hidden states h (b, t, d) against
        targets (b, t), counted where ``mask`` (b, t) bool is True: the chunked
        ``flashcore.loss.linear_cross_entropy`` (the (b, t, v) logits are never built) -> ()."""
        return fc.loss.linear_cross_entropy(
            self.canonical_params(), h, targets, mask, config=self.config, xp=xp, core=chunked_loss
        )

    @staticmethod
    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
        """``flashcore.cross_entropy`` on logits already computed: (b, t, v), (b, t) -> ()."""
        return fc.cross_entropy(logits, targets, mask, xp=xp)
