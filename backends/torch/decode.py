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

from . import kernels
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


class LMDecoding:
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
    def prefill(
        self,
        tokens: torch.Tensor,
        *,
        piece: int = 4096,
        state: dict | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Streamed prefill of a causal FLASH LM (:func:`flashcore.stream.lm_prefill`): tokens
        (b, T) ints, ``piece`` positions (a multiple of C) at a time, each through the fused
        core (:mod:`flashcore.torch.kernels`) with the carried state; memory independent of T.

        -> (logits (b, T, v), or the last position's (b, v) with ``last_only``; a decoding state
        that :meth:`decode_step` continues and ``state=`` streams on from). No autograd.
        """
        return stream.lm_prefill(
            self.canonical_params(),
            tokens,
            config=self.config,
            piece=piece,
            state=state,
            last_only=last_only,
            xp=xp,
            core=kernels.attention_core,
        )

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        lengths=None,
    ) -> torch.Tensor:
        """Continue ``prompt_tokens`` (b, t0) by ``max_new_tokens`` -> (b, max(lengths) +
        max_new_tokens) int64 on the parameters' device.

        :func:`flashcore.generation.generate_lm` with this module's decode step (or its forward,
        for a "recompute" LM) and :func:`flashcore.sampling.sample` (temperature 0: greedy).
        ``lengths`` (b,): prompts of different lengths, right-padded (see
        :mod:`flashcore.generation`). ``seed`` gives the same tokens in every backend.
        """
        sampling.check_options(temperature, top_k, top_p)
        dev = self.embed.weight.device
        opts = dict(temperature=temperature, top_k=top_k, top_p=top_p)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=dev)

        def pick(logits, u):
            return sampling.sample(logits, tensor(u), xp=xp, **opts).cpu().numpy()

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
