"""The naming tables: canonical name -> (NNX parameter path, transpose).

:func:`naming_table` keeps exactly the names of ``flashcore.param_spec(config)``; the modules'
``load_canonical`` / ``to_canonical`` (:mod:`flashcore.jax.module`) go through it and nothing else.
LM block parameters are ``layers.{i}.<block path>``.
"""

from __future__ import annotations

import flashcore as fc
from flashcore.config import FlashConfig, LMConfig, TransformerConfig

__all__ = ["Table", "naming_table"]

Table = dict[str, tuple[str, bool]]

# canonical -> (native path, transpose). Flax's layout already matches the canonical one (kernels
# [in, out], embedding (v, d)), so nothing is transposed; the flag is honoured all the same.
_LAYER: Table = {
    "norm.scale": ("norm.scale", False),  # ScaleNorm alpha (1,)
    "norm.weight": ("norm.scale", False),  # RMSNorm / LayerNorm gain (d,)
    "norm.bias": ("norm.bias", False),
    "hidden.kernel": ("uvz.kernel", False),
    "hidden.bias": ("uvz.bias", False),
    "qk.gamma": ("qk.gamma", False),
    "qk.beta": ("qk.beta", False),
    "rel_bias.weight": ("rel_bias.weight", False),
    "out.kernel": ("out.kernel", False),
    "out.bias": ("out.bias", False),
}
_TRANSFORMER: Table = {
    "attn_norm.scale": ("attn_norm.scale", False),
    "attn_norm.weight": ("attn_norm.scale", False),
    "attn_norm.bias": ("attn_norm.bias", False),
    "attn.qkv.kernel": ("attn.qkv.kernel", False),
    "attn.out.kernel": ("attn.out.kernel", False),
    "ffn_norm.scale": ("ffn_norm.scale", False),
    "ffn_norm.weight": ("ffn_norm.scale", False),
    "ffn_norm.bias": ("ffn_norm.bias", False),
    "ffn.gate.kernel": ("ffn.gate.kernel", False),
    "ffn.up.kernel": ("ffn.up.kernel", False),
    "ffn.down.kernel": ("ffn.down.kernel", False),
}
_LM: Table = {
    "embed.weight": ("embed.embedding", False),
    "type_embed.weight": ("type_embed.embedding", False),
    "embed_norm.scale": ("embed_norm.scale", False),
    "embed_norm.weight": ("embed_norm.scale", False),
    "embed_norm.bias": ("embed_norm.bias", False),
    "abs_pos.scale": ("abs_pos.scale", False),
    "final_norm.scale": ("final_norm.scale", False),
    "final_norm.weight": ("final_norm.scale", False),
    "final_norm.bias": ("final_norm.bias", False),
    "head.kernel": ("head.kernel", False),
    "head.bias": ("head.bias", False),
}


def naming_table(config: FlashConfig | TransformerConfig | LMConfig) -> Table:
    """``{canonical name: (native path, transpose)}`` for exactly the names of ``param_spec``."""
    if isinstance(config, LMConfig):
        block = naming_table(config.block)
        out = {}
        for name in fc.param_spec(config):
            if name.startswith("layers."):
                _, i, rest = name.split(".", 2)
                path, transpose = block[rest]
                out[name] = (f"layers.{i}.{path}", transpose)
            else:
                out[name] = _LM[name]
        return out
    table = _TRANSFORMER if isinstance(config, TransformerConfig) else _LAYER
    return {name: table[name] for name in fc.param_spec(config)}
