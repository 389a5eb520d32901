"""The functional JAX API: canonical parameter pytrees and pure functions over them.

    params = init(config, key)                       # {canonical name: jax.Array}
    y = apply(params, x, config=cfg)                 # layer / block: (b, t, d) -> (b, t, d)
    z = logits(params, tokens, config=lm_cfg)        # LM: (b, t) ints -> (b, t, v)
    h = hidden(params, tokens, config=lm_cfg)        # LM: (b, t) ints -> (b, t, d) last hidden states
    l = loss(params, inputs, targets, config=lm_cfg) # LM: () mean next-token cross-entropy (nats)
    masks = dropout_masks(config, key, b, t)         # keep-masks for dropout=masks (None: p = 0)

Every function calls the flashcore spec with ``jax.numpy`` as the array namespace, so it works
under ``jax.jit`` (config static: close over it or pass it with ``static_argnames``), ``jax.grad``,
``jax.vmap`` and with optax (the params are a plain dict of arrays).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

import flashcore as fc
from flashcore.config import FlashConfig, LMConfig, TransformerConfig

from .loss import chunked_loss
from .xp import float32_compute, xp

__all__ = ["init", "apply", "logits", "hidden", "loss", "dropout_masks", "remat", "Config"]

Config = FlashConfig | TransformerConfig | LMConfig


def init(config: Config, key: jax.Array, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Fresh canonical parameters drawn with ``key``: {name: array of ``param_spec`` shape}.

    Same distributions as :func:`flashcore.init` (zeros, ones, ``ParamSpec.value``,
    N(0, ``ParamSpec.std``^2)); each
    tensor uses ``fold_in(key, crc32(name))``, so adding a parameter never changes the others.
    Traceable: ``jax.eval_shape(lambda k: init(cfg, k), key)`` gives shapes without computing.
    """
    out = {}
    for name, ps in fc.param_spec(config).items():
        if ps.init == "zeros":
            out[name] = jnp.zeros(ps.shape, dtype)
        elif ps.init == "ones":
            out[name] = jnp.ones(ps.shape, dtype)
        elif ps.init == "const":
            out[name] = jnp.full(ps.shape, ps.value, dtype)
        else:
            k = jax.random.fold_in(key, zlib.crc32(name.encode()))
            out[name] = (ps.std * jax.random.normal(k, ps.shape, jnp.float32)).astype(dtype)
    return out


def dropout_masks(config: Config, key: jax.Array, b: int, t: int) -> dict[str, jax.Array] | None:
    """Fresh dropout keep-masks for one call on (b, t) inputs (:mod:`flashcore.dropout`), each
    site drawn with ``fold_in(key, crc32(site))``: {site: bool array}, True with probability
    1 - p; None when the config has dropout 0. Traceable (jit)."""

    def bernoulli(site: str, shape: tuple, keep: float) -> jax.Array:
        k = jax.random.fold_in(key, zlib.crc32(site.encode()))
        return jax.random.bernoulli(k, keep, shape)

    return fc.dropout.draw(config, b, t, bernoulli)


def remat(fn: Callable, p: dict, x: jax.Array) -> jax.Array:
    """Activation checkpointing of one block (the ``remat`` of :func:`flashcore.lm_hidden`):
    ``jax.checkpoint(fn)(p, x)``, which saves only the block's inputs and recomputes its
    activations in the backward pass. x: (b, t, d) -> (b, t, d)."""
    return jax.checkpoint(fn)(p, x)


def _jax(a):
    """Anything ``jnp.asarray`` takes (NumPy arrays, nested lists) as a jax array; jax arrays
    (tracers included) and None as they are."""
    return a if a is None or isinstance(a, jax.Array) else jnp.asarray(a)


def _float32_from_storage(fn: Callable) -> Callable:
    """``fn(params, a, **kw)`` (a: x or tokens) run in float32 from bfloat16 / float16 params
    where :func:`flashcore.jax.xp.float32_compute` says so (CPU: XLA is slow at bf16 elementwise
    ops and dots), a floating ``a`` upcast too, the result cast back to the storage dtype;
    elsewhere ``fn`` as it is."""

    @functools.wraps(fn)
    def run(params, a, /, **kw):
        wide, storage = float32_compute(params)
        if storage is None:
            return fn(params, a, **kw)
        a = _jax(a)
        if jnp.issubdtype(a.dtype, jnp.floating):
            a = a.astype(jnp.float32)
        return fn(wide, a, **kw).astype(storage)

    return run


@_float32_from_storage
def apply(
    params: dict[str, jax.Array],
    x: jax.Array,
    *,
    config: Config,
    mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    core: Callable | None = None,
    dropout: dict | None = None,
    attn_core: Callable | None = None,
) -> jax.Array:
    """One layer or block, or an LM's logits. x: (b, t, d) -> (b, t, d); LM: tokens (b, t) -> (b, t, v).

    mask: (b, t) bool, True at real positions; segment_ids: (b, t) ints (packed sequences).
    The cores are :data:`flashcore.jax.xp.KERNELS`'s (the backend contract): FLASH's Pallas
    kernel where ``kernels.can_use_kernel`` allows (GPU / TPU), Transformer++ on
    ``jax.nn.dot_product_attention`` where ``kernels.can_use_fused_attention`` allows, else the
    spec's. ``core`` / ``attn_core``: deprecated, a FLASH / softmax core taken for every call
    instead (``flashcore.layers.attention_core_flash`` / ``flashcore.lm.attention_core_softmax``
    force the spec's). dropout: keep-masks (:func:`dropout_masks`) or None (no dropout).
    bfloat16 / float16 parameters on CPU: the block computes in float32 from them and returns the
    storage dtype (:func:`flashcore.jax.xp.float32_compute`; ``FLASHCORE_LOW_PRECISION_DOTS=native``:
    in bf16).
    """
    if isinstance(config, LMConfig):
        return logits(
            params,
            x,
            config=config,
            mask=mask,
            segment_ids=segment_ids,
            core=core,
            dropout=dropout,
            attn_core=attn_core,
        )
    x, mask, segment_ids = _jax(x), _jax(mask), _jax(segment_ids)
    kw = dict(config=config, mask=mask, segment_ids=segment_ids, xp=xp, dropout=dropout)
    if isinstance(config, FlashConfig) and config.kind == "flash":
        if attn_core is not None:
            raise ValueError("attn_core= replaces Transformer++'s softmax core; FLASH has none")
        return fc.flash(params, x, core=core, **kw)
    if core is not None:
        raise ValueError("core= replaces FLASH's mixed-chunk core; this config has none")
    if isinstance(config, TransformerConfig):
        return fc.transformer_block(params, x, core=attn_core, **kw)
    if attn_core is not None:
        raise ValueError("attn_core= replaces Transformer++'s softmax core; GAU has none")
    return fc.block_fn(config)(params, x, **kw)


@_float32_from_storage
def logits(
    params: dict[str, jax.Array],
    tokens: jax.Array,
    *,
    config: LMConfig,
    mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    core: Callable | None = None,
    dropout: dict | None = None,
    attn_core: Callable | None = None,
    token_type_ids: jax.Array | None = None,
) -> jax.Array:
    """Next-token logits of an LM (a bidirectional one: its masked-LM logits). tokens: (b, t)
    ints -> (b, t, v). ``core``, ``attn_core``, ``dropout``: as in :func:`apply`;
    ``token_type_ids``: (b, t) ints or None (type 0; LMs with ``type_vocab_size`` > 0).
    bfloat16 / float16 parameters on CPU: as in :func:`apply`."""
    return fc.lm_logits(
        params,
        _jax(tokens),
        config=config,
        mask=_jax(mask),
        segment_ids=_jax(segment_ids),
        xp=xp,
        core=core,
        attn_core=attn_core,
        dropout=dropout,
        token_type_ids=_jax(token_type_ids),
    )


@_float32_from_storage
def hidden(
    params: dict[str, jax.Array],
    tokens: jax.Array,
    *,
    config: LMConfig,
    mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
) -> jax.Array:
    """The last hidden states of an LM (after its final norm, before the head), no dropout.
    tokens: (b, t) ints -> (b, t, d). bfloat16 / float16 parameters on CPU: as in :func:`apply`."""
    return fc.lm_hidden(
        params,
        _jax(tokens),
        config=config,
        mask=_jax(mask),
        xp=xp,
        token_type_ids=_jax(token_type_ids),
    )


def loss(
    params: dict[str, jax.Array],
    inputs: jax.Array,
    targets: jax.Array,
    *,
    config: LMConfig,
    mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    core: Callable | None = None,
    dropout: dict | None = None,
    loss_mask: jax.Array | None = None,
    attn_core: Callable | None = None,
    token_type_ids: jax.Array | None = None,
    checkpoint_activations: bool = False,
) -> jax.Array:
    """Mean next-token cross-entropy (nats) of ``targets`` (b, t) given ``inputs`` (b, t): ().
    The head and the cross-entropy run chunk by chunk (:func:`flashcore.jax.loss.chunked_loss`:
    the (b, t, v) logits are never built whole). ``core``, ``attn_core``, ``dropout``: as in :func:`apply`; ``loss_mask``: (b, t) bool, the
    positions counted (None: every real one). ``checkpoint_activations``: recompute each block's
    activations in the backward pass (:func:`remat`) instead of keeping them. bf16 parameters on
    CPU: the LM in float32 from them (:func:`flashcore.jax.xp.float32_compute`)."""
    params = float32_compute(params)[0]  # the loss is float32 either way
    return fc.lm_loss(
        params,
        _jax(inputs),
        _jax(targets),
        config=config,
        mask=_jax(mask),
        segment_ids=_jax(segment_ids),
        xp=xp,
        core=core,
        attn_core=attn_core,
        dropout=dropout,
        loss_mask=_jax(loss_mask),
        token_type_ids=_jax(token_type_ids),
        loss_core=chunked_loss,
        remat=remat if checkpoint_activations else None,
    )
