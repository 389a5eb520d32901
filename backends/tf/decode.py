"""Causal incremental decoding of the Keras layers (:mod:`flashcore.decode`): the methods
``decode_init`` / ``decode_step`` of every causal block and of the LM, and the LM's streamed
``prefill`` (:mod:`flashcore.stream`) and ``generate`` (the one loop of :mod:`flashcore.generation`
with :func:`flashcore.sampling.sample`).

    state = layer.decode_init(batch, capacity=None)   # FLASH state, or a GAU / Transformer++ cache
    y_t, state = layer.decode_step(x_t, state)        # x_t (b, d) -> (b, d)
    logits_t, state = lm.decode_step(tokens_t, state) # tokens_t (b,) ints -> (b, v)
    logits, state = lm.prefill(tokens, piece=4096, last_only=True)
    out = lm.generate(prompt, 100, top_k=40, seed=0)  # (b, t0) -> (b, t0 + 100) int64

Wrap ``decode_step`` in ``tf.function(jit_compile=True)`` to compile one step for every position.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from flashcore import decode, generation, sampling, stream

from .module import no_autograph
from .xp import xp

__all__ = ["BlockDecoding", "LMDecoding"]


def _decode_state(state: dict) -> dict:
    # TF does not promote int32 with int64, and the spec compares pos with int64 host constants.
    return {**state, "pos": tf.cast(state["pos"], tf.int64)}


class BlockDecoding:
    """``decode_init`` / ``decode_step`` of a causal block (mixed into GAU, FLASH and
    TransformerBlock)."""

    def decode_init(self, batch: int, capacity: int | None = None) -> dict[str, tf.Tensor]:
        """An empty decoding state for ``batch`` sequences (FLASH's state, or a GAU /
        Transformer++ key/value cache of ``capacity`` positions; see :mod:`flashcore.decode`)."""
        dtype = tf.as_dtype(self.compute_dtype)
        state = decode.decode_init(self.config, batch, capacity=capacity, xp=xp, dtype=dtype)
        return _decode_state(state)

    @no_autograph
    def decode_step(self, x_t, state: dict) -> tuple[tf.Tensor, dict]:
        """One position: x_t (b, d) -> (out (b, d), new state), the forward's row at this
        position (for GAU: the last row of the forward on the prefix). Wrap in ``tf.function``
        to compile one step for every position."""
        x_t = tf.cast(x_t, self.compute_dtype)
        return decode.decode_step(self.canonical_params(), x_t, state, config=self.config, xp=xp)


class LMDecoding(generation.Generating, stream.Prefilling):
    """``decode_init`` / ``decode_step`` / ``prefill`` / ``generate`` of the LM (mixed into
    :class:`flashcore.tf.LM`)."""

    def decode_init(self, batch: int, capacity: int | None = None) -> dict:
        """An empty decoding state for ``batch`` sequences (``capacity``: positions of a GAU /
        Transformer++ cache; see :func:`flashcore.decode.lm_decode_init`)."""
        dtype = tf.as_dtype(self.compute_dtype)
        state = decode.lm_decode_init(self.config, batch, capacity=capacity, xp=xp, dtype=dtype)
        return {k: _decode_state(v) for k, v in state.items()}

    @no_autograph
    def decode_step(self, tokens_t, state: dict) -> tuple[tf.Tensor, dict]:
        """One token per row: tokens_t (b,) ints -> (logits (b, v), new state).

        Wrap in ``tf.function(jit_compile=True)`` to compile one step for every position.
        """
        return decode.lm_decode_step(
            self.canonical_params(), tokens_t, state, config=self.config, xp=xp
        )

    @no_autograph
    def _prefill(self, tokens, options: dict) -> tuple[tf.Tensor, dict]:
        """:meth:`prefill` (:class:`flashcore.stream.Prefilling`): each piece one ``tf.function``
        call (traced once per piece length) carrying the decoding state."""
        params = self.canonical_params()
        tokens = tf.convert_to_tensor(tokens)
        if options["state"] is None:
            options = {**options, "state": self.decode_init(int(tokens.shape[0]))}
        opts = dict(config=self.config, xp=xp, last_only=options["last_only"])
        piece_fn = tf.function(lambda t, s: stream.prefill_piece(params, t, s, **opts))
        return stream.lm_prefill(
            params, tokens, config=self.config, xp=xp, piece_fn=piece_fn, **options
        )

    def _generate(self, prompt_tokens, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`): this LM's decode step
        and the sampler in one XLA-compiled ``tf.while_loop`` (``run``: no host round trip per
        token; a "recompute" LM reruns the forward eagerly per length) -> NumPy int64.

        The compiled functions are kept on the LM per sampler (:meth:`_generation_fns`), so a
        second call traces nothing; they read the weights' variables, so later weight updates
        are seen."""
        pick, run = self._generation_fns(sampler)

        def loop(state, out, n, draws, start):
            args = (tf.constant(out, tf.int32), tf.constant(n, tf.int32), tf.constant(draws))
            return run(state, *args, tf.constant(start, tf.int32)).numpy()

        return generation.generate_lm(
            self.config,
            np.asarray(prompt_tokens),
            max_new_tokens=max_new_tokens,
            lengths=lengths,
            seed=seed,
            init=self.decode_init,
            step=lambda tok, state: self.decode_step(tf.constant(tok, tf.int32), state),
            forward_last=lambda tokens: self(tf.constant(tokens, tf.int32))[:, -1],
            pick=lambda logits, u: pick(logits, tf.constant(u)).numpy(),
            loop=loop,
        )

    def _generation_fns(self, sampler: dict) -> tuple:
        """(pick, run) for one sampler, traced on first use and kept on the LM (outside Keras'
        attribute tracking): ``pick(logits, u)`` the compiled sampler of a "recompute" LM's host
        loop, ``run(state, out, n, draws, start)`` generation's loop as one XLA while loop.
        ``run`` relaxes shapes after a second length (``reduce_retracing``); XLA compiles once
        per shape."""
        cache = vars(self).get("_flashcore_generation")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_flashcore_generation", cache)
        key = tuple(sorted(sampler.items()))
        if key in cache:
            return cache[key]

        @tf.function(jit_compile=True, reduce_retracing=True)
        def pick(logits, u):
            return sampling.sample(logits, tf.cast(u, logits.dtype), xp=xp, **sampler)

        @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
        def run(state, out, n, draws, start):  # (b, total) int32 with the prompts -> filled in
            total = tf.shape(out)[1]

            def body(t, out, state):
                logits, state = self.decode_step(tf.gather(out, t, axis=1), state)
                u = tf.cast(tf.gather(draws, t), logits.dtype)
                new = tf.cast(sampling.sample(logits, u, xp=xp, **sampler), out.dtype)  # (b,)
                col = generation.next_tokens(tf.gather(out, t + 1, axis=1), new, t + 1, n, xp)
                here = tf.one_hot(t + 1, total, on_value=True, off_value=False)  # (total,)
                return t + 1, tf.where(here[None, :], col[:, None], out), state

            done = lambda t, out, state: t < total - 1  # noqa: E731
            return tf.while_loop(done, body, (start, out, state))[1]

        cache[key] = (pick, run)
        return cache[key]
