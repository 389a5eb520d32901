"""The naming tables: canonical name -> (torch state_dict name, transpose).

Each table is written out in full for its module type; :func:`naming_table` keeps the rows whose
canonical name the config has (``flashcore.param_spec``) and fails on a canonical name that no row
covers, so a new spec parameter cannot be mapped by guessing. ``transpose`` is True exactly for
``nn.Linear`` weights, stored ``[out, in]`` where the canonical kernel is ``[in, out]``.
"""

from __future__ import annotations

import flashcore as fc

__all__ = ["LAYER", "TRANSFORMER", "LM", "naming_table"]

NamingTable = dict[str, tuple[str, bool]]

# GAU and FLASH layers (flashcore.torch.GAU / FLASH).
LAYER: NamingTable = {
    "norm.scale": ("norm.scale", False),  # (1,) ScaleNorm
    "norm.weight": ("norm.weight", False),  # (d,) RMS / LayerNorm gain
    "norm.bias": ("norm.bias", False),  # (d,) LayerNorm bias
    "hidden.kernel": ("hidden.weight", True),  # nn.Linear(d, 2e + s)
    "hidden.bias": ("hidden.bias", False),
    "qk.gamma": ("qk.gamma", False),  # (h, s)
    "qk.beta": ("qk.beta", False),  # (h, s)
    "rel_bias.weight": ("rel_bias.weight", False),  # (2L - 1,) or (t5_buckets,)
    "out.kernel": ("out.weight", True),  # nn.Linear(e, d)
    "out.bias": ("out.bias", False),
}

# Transformer++ block (flashcore.torch.TransformerBlock).
TRANSFORMER: NamingTable = {
    "attn_norm.scale": ("attn_norm.scale", False),
    "attn_norm.weight": ("attn_norm.weight", False),
    "attn_norm.bias": ("attn_norm.bias", False),
    "attn.qkv.kernel": ("attn.qkv.weight", True),  # nn.Linear(d, 3d, bias=False)
    "attn.out.kernel": ("attn.out.weight", True),  # nn.Linear(d, d, bias=False)
    "ffn_norm.scale": ("ffn_norm.scale", False),
    "ffn_norm.weight": ("ffn_norm.weight", False),
    "ffn_norm.bias": ("ffn_norm.bias", False),
    "ffn.gate.kernel": ("ffn.gate.weight", True),  # nn.Linear(d, f, bias=False)
    "ffn.up.kernel": ("ffn.up.weight", True),  # nn.Linear(d, f, bias=False)
    "ffn.down.kernel": ("ffn.down.weight", True),  # nn.Linear(f, d, bias=False)
}

# Language model, outside its blocks; block i maps through its own table under "layers.{i}.".
LM: NamingTable = {
    "embed.weight": ("embed.weight", False),  # nn.Embedding(v, d): (v, d) both ways
    "type_embed.weight": ("type_embed.weight", False),  # nn.Embedding(n, d), type_vocab_size > 0
    "embed_norm.scale": ("embed_norm.scale", False),
    "embed_norm.weight": ("embed_norm.weight", False),
    "embed_norm.bias": ("embed_norm.bias", False),
    "abs_pos.scale": ("abs_pos.scale", False),  # (1,), abs_pos="scaled_sinusoidal" only
    "final_norm.scale": ("final_norm.scale", False),
    "final_norm.weight": ("final_norm.weight", False),
    "final_norm.bias": ("final_norm.bias", False),
    "head.kernel": ("head.weight", True),  # nn.Linear(d, v), untied only
    "head.bias": ("head.bias", False),  # (v,), head_bias=True only (tied or not)
}


def _pick(table: NamingTable, names, what: str) -> NamingTable:
    unmapped = sorted(n for n in names if n not in table)
    if unmapped:
        raise KeyError(f"no torch name for canonical {what} parameter(s) {unmapped}")
    return {n: table[n] for n in names}


def naming_table(config: fc.FlashConfig | fc.TransformerConfig | fc.LMConfig) -> NamingTable:
    """{canonical name: (native name, transpose)} for exactly the parameters of ``config``."""
    if isinstance(config, fc.FlashConfig):
        return _pick(LAYER, fc.param_spec(config), config.kind)
    if isinstance(config, fc.TransformerConfig):
        return _pick(TRANSFORMER, fc.param_spec(config), "transformer")
    if isinstance(config, fc.LMConfig):
        block = naming_table(config.block)
        out: NamingTable = {}
        for name in fc.param_spec(config):
            if name.startswith("layers."):
                i, _, rest = name[len("layers.") :].partition(".")
                native, transpose = block[rest]
                out[name] = (f"layers.{i}.{native}", transpose)
            else:
                out.update(_pick(LM, [name], "LM"))
        return out
    raise TypeError(f"naming_table takes a flashcore config, got {type(config).__name__}")
