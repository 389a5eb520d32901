"""The canonical parameter layout: flat dot-separated names -> (shape, initializer).

Kernels are ``[in, out]`` and the code computes ``x @ kernel``. Names carry no container indices;
LM layers are numbered ``layers.{i}.``. The table in ``docs/weights.md`` is generated from
:func:`param_spec` (``python -m flashcore.params``), so it cannot drift from the code.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._xp import dtype_name
from .checks import is_floating
from .config import FlashConfig, LMConfig, TransformerConfig
from .ops import REL_BIASES

__all__ = ["ParamSpec", "param_spec", "init", "check_params", "subtree"]

Init = Literal["zeros", "ones", "const", "lecun", "qk_gamma", "embed"]


@dataclass(frozen=True)
class ParamSpec:
    """One canonical tensor: its shape, its initializer and what it is."""

    shape: tuple[int, ...]
    init: Init
    doc: str
    value: float = 0.0  # every entry's value, for init 'const'

    @property
    def std(self) -> float | None:
        """The standard deviation of the normal initializer (mean 0): fan_in^-1/2 (fan_in =
        ``shape[0]``, kernels are [in, out]) for 'lecun', 0.02 for 'qk_gamma' and 'embed'; None
        for the constants 'zeros', 'ones' and 'const' (:attr:`value`). Every backend's initializer
        reads it here."""
        if self.init == "lecun":
            return self.shape[0] ** -0.5
        return _NORMAL_STD.get(self.init)


_NORMAL_STD = {"qk_gamma": 0.02, "embed": 0.02}  # the paper's N(0, 0.02^2) for gamma / beta


_INIT_DOC = {
    "zeros": "0",
    "ones": "1",
    "const": "{value:.4g}",
    "lecun": "N(0, 1/fan_in)",
    "qk_gamma": f"N(0, {_NORMAL_STD['qk_gamma']}^2) (paper)",
    "embed": f"N(0, {_NORMAL_STD['embed']}^2)",
}


def _norm_spec(prefix: str, norm: str, d: int, affine: bool = True) -> dict[str, ParamSpec]:
    """The weights of a norm: none for ``norm='none'`` or a parameter-free one."""
    if norm == "none" or not affine:
        return {}
    if norm == "scale":
        return {f"{prefix}scale": ParamSpec((1,), "ones", "ScaleNorm alpha")}
    if norm == "rms":
        return {f"{prefix}weight": ParamSpec((d,), "ones", "RMSNorm gain")}
    return {
        f"{prefix}weight": ParamSpec((d,), "ones", "LayerNorm gain"),
        f"{prefix}bias": ParamSpec((d,), "zeros", "LayerNorm bias"),
    }


def _layer_spec(cfg: FlashConfig) -> dict[str, ParamSpec]:
    d, e, s, h = cfg.dim, cfg.expanded_dim, cfg.qk_dim, cfg.num_heads
    heads = "q, k" if cfg.kind == "gau" else "quad_q, quad_k, lin_q, lin_k"
    spec = _norm_spec("norm.", cfg.norm, d, cfg.norm_affine)
    spec["hidden.kernel"] = ParamSpec((d, 2 * e + s), "lecun", "[U | V | Z] projection, d -> 2e+s")
    if cfg.use_bias:
        spec["hidden.bias"] = ParamSpec((2 * e + s,), "zeros", "[U | V | Z] bias")
    spec["qk.gamma"] = ParamSpec((h, s), "qk_gamma", f"scale-offset scales, rows {heads}")
    if cfg.use_bias:
        spec["qk.beta"] = ParamSpec((h, s), "zeros", f"scale-offset offsets, rows {heads}")
    bias = REL_BIASES[cfg.rel_bias]
    if bias.rows is not None:
        doc = bias.doc + "; starts at L^-1/2 (init='uniform') or 0 ('paper')"
        spec["rel_bias.weight"] = _rel_bias_start(cfg, (bias.rows(cfg),), doc)
    spec["out.kernel"] = ParamSpec((e, d), "lecun", "output projection, e -> d")
    if cfg.use_bias:
        spec["out.bias"] = ParamSpec((d,), "zeros", "output bias")
    return spec


def _rel_bias_start(cfg: FlashConfig, shape: tuple[int, ...], doc: str) -> ParamSpec:
    """The relative-bias weights' start: 0 (``init="paper"``), or, for relu^2 attention, the w
    that makes the bias term of the scores L^-1/2 with L = the bias span (C for FLASH, max_len
    for GAU; ``init="uniform"``): w = L^-1/2 / bias_scale, times L when the bias is added before
    the 1/n scaling. relu^2(Q K^T / n + B) then starts near relu^2(L^-1/2) = 1/L on every key, a
    uniform average of mass about 1, alive and with a gradient of 2 L^-1/2 instead of about 0
    (docs/init.md). Other attention functions keep 0 (a constant bias does not move softmax)."""
    if cfg.init == "paper" or cfg.attention != "relu2" or cfg.bias_scale == 0:
        return ParamSpec(shape, "zeros", doc)
    span = cfg.bias_span
    value = span**-0.5 * (span if cfg.bias_before_scale else 1) / cfg.bias_scale
    return ParamSpec(shape, "const", doc, value=value)


def _transformer_spec(cfg: TransformerConfig) -> dict[str, ParamSpec]:
    d, f = cfg.dim, cfg.hidden_dim
    spec = _norm_spec("attn_norm.", cfg.norm, d)
    spec["attn.qkv.kernel"] = ParamSpec((d, 3 * d), "lecun", "[Q | K | V], heads-major in each")
    spec["attn.out.kernel"] = ParamSpec((d, d), "lecun", "attention output projection")
    spec.update(_norm_spec("ffn_norm.", cfg.norm, d))
    spec["ffn.gate.kernel"] = ParamSpec((d, f), "lecun", "SwiGLU gate (SiLU side)")
    spec["ffn.up.kernel"] = ParamSpec((d, f), "lecun", "SwiGLU linear side")
    spec["ffn.down.kernel"] = ParamSpec((f, d), "lecun", "SwiGLU output")
    return spec


def param_spec(config: FlashConfig | TransformerConfig | LMConfig) -> dict[str, ParamSpec]:
    """The canonical name -> :class:`ParamSpec` table of a layer, a block or a whole LM."""
    if isinstance(config, FlashConfig):
        return _layer_spec(config)
    if isinstance(config, TransformerConfig):
        return _transformer_spec(config)
    if isinstance(config, LMConfig):
        block = param_spec(config.block)
        spec = {"embed.weight": ParamSpec((config.vocab_size, config.dim), "embed", "token table")}
        if config.type_vocab_size:
            spec["type_embed.weight"] = ParamSpec(
                (config.type_vocab_size, config.dim), "embed", "token-type table"
            )
        affine = getattr(config.block, "norm_affine", True)
        spec.update(_norm_spec("embed_norm.", config.embed_norm, config.dim, affine))
        for i in range(config.num_layers):
            spec.update({f"layers.{i}.{k}": v for k, v in block.items()})
        if config.abs_pos == "scaled_sinusoidal":
            spec["abs_pos.scale"] = ParamSpec((1,), "ones", "scale of the sinusoidal positions")
        spec.update(_norm_spec("final_norm.", config.final_norm_kind, config.dim, affine))
        if not config.tie_embeddings:
            spec["head.kernel"] = ParamSpec(
                (config.dim, config.vocab_size), "lecun", "output head, d -> vocab"
            )
        if config.head_bias:
            spec["head.bias"] = ParamSpec((config.vocab_size,), "zeros", "output head bias")
        return spec
    raise TypeError(f"param_spec takes a flashcore config, got {type(config).__name__}")


def init(
    config: FlashConfig | TransformerConfig | LMConfig, seed: int = 0, dtype=np.float32
) -> dict[str, np.ndarray]:
    """Fresh canonical parameters as NumPy arrays.

    Each tensor draws from its own stream seeded by ``(seed, crc32(name))``, so adding a parameter
    never changes the values of the others.
    """
    out: dict[str, np.ndarray] = {}
    for name, ps in param_spec(config).items():
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        if ps.init == "zeros":
            a = np.zeros(ps.shape)
        elif ps.init == "ones":
            a = np.ones(ps.shape)
        elif ps.init == "const":
            a = np.full(ps.shape, ps.value)
        else:  # lecun, qk_gamma, embed
            a = rng.normal(0.0, ps.std, ps.shape)
        out[name] = a.astype(dtype)
    return out


def check_params(params: dict, config: FlashConfig | TransformerConfig | LMConfig) -> None:
    """Raise ValueError unless ``params`` has exactly the canonical names and shapes of ``config``
    and every value is real floating point (float16 / bfloat16 / float32 / float64).

    Shapes and dtypes only (static under jit); the message lists every problem found."""
    spec = param_spec(config)
    missing = sorted(set(spec) - set(params))
    extra = sorted(set(params) - set(spec))
    if missing or extra:
        raise ValueError(
            f"parameter names do not match the config: missing {missing}, unexpected {extra}"
        )
    bad = [
        f"{k}: expected {spec[k].shape}, got {tuple(params[k].shape)}"
        for k in spec
        if tuple(params[k].shape) != spec[k].shape
    ]
    if bad:
        raise ValueError("parameter shapes do not match the config: " + "; ".join(bad))
    not_float = [
        f"{k}: expected a floating dtype, got {dtype_name(params[k].dtype)}"
        for k in spec
        if not is_floating(params[k].dtype)
    ]
    if not_float:
        raise ValueError("parameters must be floating point: " + "; ".join(not_float))


def subtree(params: dict, prefix: str) -> dict:
    """The entries under ``prefix`` with the prefix removed (``layers.0.``, ``norm.``, ...)."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def weight_table_markdown() -> str:
    """The canonical weight table for the docs, for small example configs."""
    lines = []
    examples = [
        ("FLASH layer", FlashConfig(dim=512)),
        ("GAU layer", FlashConfig(dim=512, kind="gau", rel_bias="learned")),
        ("Transformer++ block", TransformerConfig(dim=512)),
    ]
    for title, cfg in examples:
        lines += [
            f"### {title}: `{cfg!r}`",
            "",
            "| name | shape | init | meaning |",
            "|---|---|---|---|",
        ]
        for name, ps in param_spec(cfg).items():
            start = _INIT_DOC[ps.init].format(value=ps.value)
            lines.append(f"| `{name}` | {ps.shape} | {start} | {ps.doc} |")
        lines.append("")
    return "\n".join(lines)


def print_weight_table(argv: list[str] | None = None) -> int:
    """``flashcore weights-table``: print the generated part of docs/weights.md."""
    print(weight_table_markdown())
    return 0
