"""The naming tables: canonical name -> (Keras variable name, transpose).

Keras kernels are [in, out] like the canonical ones, so nothing is transposed; the flag is
honoured all the same (the loader in :mod:`flashcore.tf.module` goes through the table and nothing
else). Norm gains follow Keras: LayerNormalization gamma/beta, RMSNorm scale. :func:`naming_table`
keeps exactly the names of ``flashcore.param_spec(config)``.
"""

from __future__ import annotations

import flashcore as fc
from flashcore.config import FlashConfig, LMConfig, TransformerConfig

__all__ = ["Table", "naming_table"]

Table = dict[str, tuple[str, bool]]

_FLASH: Table = {
    "hidden.kernel": ("uvz_kernel", False),
    "hidden.bias": ("uvz_bias", False),
    "qk.gamma": ("qk_gamma", False),
    "qk.beta": ("qk_beta", False),
    "rel_bias.weight": ("rel_pos_bias", False),
    "out.kernel": ("out_kernel", False),
    "out.bias": ("out_bias", False),
}
_TRANSFORMER: Table = {
    "attn.qkv.kernel": ("qkv_kernel", False),
    "attn.out.kernel": ("attn_out_kernel", False),
    "ffn.gate.kernel": ("ffn_gate_kernel", False),
    "ffn.up.kernel": ("ffn_up_kernel", False),
    "ffn.down.kernel": ("ffn_down_kernel", False),
}
_LM: Table = {
    "embed.weight": ("embeddings", False),
    "type_embed.weight": ("type_embeddings", False),
    "abs_pos.scale": ("abs_pos_scale", False),
    "head.kernel": ("head_kernel", False),
    "head.bias": ("head_bias", False),
}


def _norm_table(canonical: str, native: str, kind: str) -> Table:
    if kind == "layer":
        return {
            f"{canonical}weight": (f"{native}_gamma", False),
            f"{canonical}bias": (f"{native}_beta", False),
        }
    return {f"{canonical}{'scale' if kind == 'scale' else 'weight'}": (f"{native}_scale", False)}


def naming_table(config: FlashConfig | TransformerConfig | LMConfig) -> Table:
    """``{canonical name: (native name, transpose)}`` for exactly the names of ``param_spec``.

    LM block weights are ``block_{i}/<block native name>``.
    """
    if isinstance(config, LMConfig):
        table = _LM | _norm_table("final_norm.", "final_norm", config.final_norm_kind)
        table |= _norm_table("embed_norm.", "embed_norm", config.embed_norm)
        block = naming_table(config.block)
        for i in range(config.num_layers):
            table |= {f"layers.{i}.{k}": (f"block_{i}/{n}", t) for k, (n, t) in block.items()}
    elif isinstance(config, TransformerConfig):
        table = _TRANSFORMER | _norm_table("attn_norm.", "attn_norm", config.norm)
        table |= _norm_table("ffn_norm.", "ffn_norm", config.norm)
    elif isinstance(config, FlashConfig):
        table = _FLASH | _norm_table("norm.", "norm", config.norm)
    else:
        raise TypeError(f"naming_table takes a flashcore config, got {type(config).__name__}")
    return {name: table[name] for name in fc.param_spec(config)}
