"""flashcore.jax: the native JAX backend (Flax NNX modules and a functional API). Importing it
imports jax and flax.

The math is the flashcore spec, called with ``jax.numpy`` as its array namespace:

    functional: init(config, key) -> {canonical name: array}; apply(params, x, config=...);
                logits / loss for LMs. Pure, for jax.jit / grad / vmap and optax.
    layers, lm: FLASH, GAU, TransformerBlock (layers), LM (lm): nnx.Module, parameters as
                nnx.Param; load_canonical / to_canonical through :func:`naming_table` (naming).
    decode:     decode_init / decode_step / scan (lax.scan) / generate / prefill functions, and
                the same names as methods of the modules: causal incremental decoding (FLASH
                state, GAU / Transformer++ key/value caches).
    parallel:   data_mesh / shard_batch / replicate: data parallelism with jax.sharding.
    kernels:    flash_core (a Pallas mixed-chunk attention kernel) behind can_use_kernel, and
                softmax_core (Transformer++ on jax.nn.dot_product_attention) behind
                can_use_fused_attention.
    io:         save / load (Flax msgpack files), save_canonical / load_canonical (safetensors).
    xp:         the namespace the modules hand the spec.
    compiler:   compiler_options / jit: the XLA options flashcore's compiled steps use on CPU
                (pass them to your own jax.jit).
"""

from . import compiler, decode, functional, io, parallel
from .compiler import compiler_options
from .functional import apply, init, logits, loss
from .layers import FLASH, GAU, TransformerBlock
from .lm import LM
from .module import CanonicalModule, block_class
from .naming import naming_table
from .xp import xp

__all__ = [
    "init",
    "apply",
    "logits",
    "loss",
    "FLASH",
    "GAU",
    "TransformerBlock",
    "LM",
    "block_class",
    "CanonicalModule",
    "naming_table",
    "functional",
    "decode",
    "parallel",
    "io",
    "xp",
    "compiler",
    "compiler_options",
]
