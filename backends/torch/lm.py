"""The language model as a torch module: embedding, blocks, final norm, head (tied by default).

The forward and the loss are flashcore.lm_logits / lm_loss; FLASH LMs decode incrementally through
flashcore.decode.

    lm = LM(LMConfig(block=FlashConfig(dim=256, causal=True), vocab_size=256), seed=0)
    logits = lm(tokens)                       # (b, t) ints -> (b, t, v)
    loss = lm.loss(tokens, targets)           # mean next-token cross-entropy, nats
    out = lm.generate(prompt, 100, top_k=40)  # (b, t0) -> (b, t0 + 100)
    lm = LM.from_pretrained("dir")            # config.json + canonical model.safetensors
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from torch import nn

import flashcore as fc
from flashcore import decode

from . import kernels
from .layers import block_class, check_no_dropout
from .module import CanonicalModule, ParamGroup, norm_params
from .sampling import next_token

__all__ = ["LM"]


class LM(CanonicalModule):
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
        if config.abs_pos == "scaled_sinusoidal":
            self.abs_pos = ParamGroup({"scale": (1,)}, **f)
        self.layers = nn.ModuleList(
            block_class(block)(block, init=False, **f) for _ in range(config.num_layers)
        )
        self.final_norm = norm_params(config.final_norm_kind, d, **f)
        if not config.tie_embeddings:
            self.head = nn.Linear(d, v, bias=config.head_bias, **f)  # (v, d), (v,)
        elif config.head_bias:
            self.head = ParamGroup({"bias": (v,)}, **f)  # the weight is embed.weight
        self._init(seed, init)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, **hub) -> LM:
        """An LM from a pretrained directory (config.json + canonical model.safetensors, as
        ``save_pretrained`` and ``flashcore export`` write it) or a Hub id (``hub``: revision,
        cache_dir, local_files_only, token; see :func:`flashcore.pretrained.resolve`), in the
        file's dtype. Needs no transformers."""
        from flashcore import pretrained

        from . import io

        directory, path = pretrained.weights_file(name_or_path, **hub)
        lm = io.load_canonical(path, device=device)
        if not isinstance(lm, cls):
            raise fc.io.WeightFileError(f"{path}: holds a {type(lm).__name__}, not an LM")
        pretrained.check_config_json(directory, lm.config)
        return lm

    def forward(self, tokens: torch.Tensor, mask=None, segment_ids=None) -> torch.Tensor:
        """tokens: (b, t) ints; mask: (b, t) bool, True = real; segment_ids: (b, t) ints
        -> logits (b, t, v)."""
        check_no_dropout(self, self.config.block)
        return fc.lm_logits(
            self.canonical_params(),
            tokens,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            xp=xp,
            core=kernels.attention_core,
        )

    def loss(
        self, tokens: torch.Tensor, targets: torch.Tensor, mask=None, segment_ids=None
    ) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of ``targets`` (b, t) given ``tokens`` (b, t),
        counted at real positions of ``mask``: ``flashcore.lm_loss``. Returns a 0-d tensor."""
        check_no_dropout(self, self.config.block)
        return fc.lm_loss(
            self.canonical_params(),
            tokens,
            targets,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            xp=xp,
            core=kernels.attention_core,
        )

    @staticmethod
    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
        """``flashcore.cross_entropy`` on logits already computed: (b, t, v), (b, t) -> ()."""
        return fc.cross_entropy(logits, targets, mask, xp=xp)

    # -- generation ------------------------------------------------------------------------
    @property
    def incremental(self) -> bool:
        """True when the blocks are causal FLASH layers, which decode at constant cost per token."""
        block = self.config.block
        return isinstance(block, fc.FlashConfig) and block.kind == "flash" and block.causal

    def decode_init(self, batch: int) -> dict[str, dict[str, torch.Tensor]]:
        """An empty state ``{"layers.{i}": layer state}`` (see :mod:`flashcore.decode`)."""
        p = self.embed.weight
        return decode.lm_decode_init(self.config, batch, xp=xp, dtype=p.dtype, device=p.device)

    def decode_step(
        self, tokens_t: torch.Tensor, state: dict
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """One token per row: tokens_t (b,) ints -> (logits (b, v), new state); the logits equal
        the forward's at this position."""
        return decode.lm_decode_step(
            self.canonical_params(), tokens_t, state, config=self.config, xp=xp
        )

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt_tokens`` (b, t0) by ``max_new_tokens`` -> (b, t0 + max_new_tokens).

        FLASH LMs feed the prompt and then each new token through :meth:`decode_step` (constant
        cost per token); GAU and Transformer++ LMs rerun the forward on the growing sequence.
        Tokens are chosen by :func:`flashcore.torch.sampling.next_token`.
        """
        if not self.config.block.causal:
            raise ValueError("generate needs a causal block; this LM is bidirectional")
        if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] == 0:
            raise ValueError(f"prompt_tokens must be (batch, time >= 1), got {prompt_tokens.shape}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        pick = dict(temperature=temperature, top_k=top_k, greedy=greedy, generator=generator)
        tokens = prompt_tokens
        if self.incremental:
            state = self.decode_init(tokens.shape[0])
            for i in range(tokens.shape[1]):
                logits, state = self.decode_step(tokens[:, i], state)  # (b, v)
        for n in range(max_new_tokens):
            if not self.incremental:
                logits = self(tokens)[:, -1]  # (b, v)
            new = next_token(logits, **pick)  # (b,)
            tokens = torch.cat([tokens, new[:, None].to(tokens.dtype)], dim=1)
            if self.incremental and n + 1 < max_new_tokens:
                logits, state = self.decode_step(new, state)
        return tokens
