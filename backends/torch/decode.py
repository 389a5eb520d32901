"""Causal incremental decoding of the torch modules (:mod:`flashcore.decode`): the methods
``decode_init`` / ``decode_step`` of every causal block and of the LM, the LM's streamed
``prefill`` (:mod:`flashcore.stream`) and ``generate`` (the one loop of
:mod:`flashcore.generation` with :func:`flashcore.sampling.sample`).

    state = layer.decode_init(batch, capacity=None)   # FLASH state, or a GAU / Transformer++ cache
    y_t, state = layer.decode_step(x_t, state)        # x_t (b, d) -> (b, d)
    logits_t, state = lm.decode_step(tokens_t, state) # tokens_t (b,) ints -> (b, v)
    logits, state = lm.prefill(tokens, piece=4096, last_only=True)
    out = lm.generate(prompt, 100, top_k=40, seed=0)  # (b, t0) -> (b, t0 + 100)
"""

from __future__ import annotations

import numpy as np
import torch

from flashcore import decode, generation, sampling, stream

from .xp import xp

__all__ = ["BlockDecoding", "LMDecoding"]


class BlockDecoding:
    """Incremental decoding of a causal block (:mod:`flashcore.decode`): FLASH's constant-size
    state, or a GAU / Transformer++ key/value cache of ``capacity`` positions (mixed into GAU,
    FLASH and TransformerBlock)."""

    def decode_init(self, batch: int, capacity: int | None = None) -> dict[str, torch.Tensor]:
        """An empty decoding state for ``batch`` sequences, in the parameters' dtype and device."""
        p = next(self.parameters())
        return decode.decode_init(
            self.config, batch, capacity=capacity, xp=xp, dtype=p.dtype, device=p.device
        )

    def decode_step(
        self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One position per row: x_t (b, d) -> (out (b, d), new state); out equals the
        forward's at this position (the last row of the forward on the prefix, for GAU)."""
        return decode.decode_step(self.canonical_params(), x_t, state, config=self.config, xp=xp)


class LMDecoding(generation.Generating, stream.Prefilling):
    """``decode_method`` / ``decode_init`` / ``decode_step`` / ``prefill`` / ``generate`` of the
    LM (mixed into :class:`flashcore.torch.LM`)."""

    @property
    def decode_method(self) -> str:
        """How this LM decodes (:func:`flashcore.decode.decode_method`): "state", "cache" or
        "recompute"."""
        return decode.decode_method(self.config)

    def decode_init(self, batch: int, capacity: int | None = None) -> dict[str, dict]:
        """An empty state ``{"layers.{i}": layer state}`` (see :mod:`flashcore.decode`);
        ``capacity``: positions of a GAU / Transformer++ cache."""
        p = self.embed.weight
        return decode.lm_decode_init(
            self.config, batch, capacity=capacity, xp=xp, dtype=p.dtype, device=p.device
        )

    def decode_step(
        self, tokens_t: torch.Tensor, state: dict
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """One token per row: tokens_t (b,) ints -> (logits (b, v), new state); the logits equal
        the forward's at this position."""
        return decode.lm_decode_step(
            self.canonical_params(), tokens_t, state, config=self.config, xp=xp
        )

    @torch.no_grad()
    def _prefill(self, tokens: torch.Tensor, options: dict):
        """:meth:`prefill` (:class:`flashcore.stream.Prefilling`) on the fast core
        (the namespace's :data:`flashcore.torch.xp.KERNELS`), without autograd."""
        return stream.lm_prefill(
            self.canonical_params(),
            tokens,
            config=self.config,
            xp=xp,
            **options,
        )

    @torch.no_grad()
    def _generate(self, prompt_tokens, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`): this module's decode
        step (or its forward) and the sampler, on the parameters' device -> a tensor there."""
        dev = self.embed.weight.device

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=dev)

        def pick(logits, u):
            return sampling.sample(logits, tensor(u), xp=xp, **sampler).cpu().numpy()

        if isinstance(prompt_tokens, torch.Tensor):
            prompt_tokens = prompt_tokens.cpu().numpy()
        out = generation.generate_lm(
            self.config,
            prompt_tokens,
            max_new_tokens=max_new_tokens,
            lengths=lengths,
            seed=seed,
            init=self.decode_init,
            step=lambda tok, state: self.decode_step(tensor(tok), state),
            forward_last=lambda tokens: self(tensor(tokens))[:, -1],
            pick=pick,
        )
        return tensor(out)
