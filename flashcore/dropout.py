"""Dropout as an explicit argument: the caller draws boolean keep-masks, the spec applies them.

The spec has no randomness of its own. A layer, block or LM takes ``dropout``: None (no dropout:
exactly the deterministic layer, the same code and no extra operation) or a dict of keep-masks,
one per site, ``{site: (shape) bool}``, True = keep. A kept value is scaled by 1 / (1 - p), with
p = ``config.dropout``::

    y = x * keep / (1 - p)

Sites (docs/math.md, "Dropout"), as GAU-alpha and the Transformer++ baseline place them:

- GAU:   ``attn`` (b, t, j): the attention weights A, after the causal / key masks, before A V;
         ``out`` (b, t, d): the layer's output (U * A V) W_o + b_o, before the residual + x.
- FLASH: ``attn`` (b, g, c, k): the local quadratic weights of every chunk (t padded to g C);
         ``out`` (b, t, d) as GAU. The linear branch has no attention matrix and takes none.
- Transformer++: ``attn`` (b, n, t, j): the softmax probabilities; ``attn_out`` (b, t, d): the
         attention output after W_o; ``ffn_out`` (b, t, d): the SwiGLU output; each before its
         residual.
- LM: ``layers.{i}.<site>`` for each block i; the embedding and the head take none.

:func:`dropout_shapes` says which masks a config needs (none when p = 0), :func:`draw` draws
them with a backend's own generator, :func:`check_dropout` validates what a caller passes.
"""

from __future__ import annotations

from collections.abc import Callable

from ._xp import dtype_name
from .config import FlashConfig, LMConfig, TransformerConfig

__all__ = ["dropout_shapes", "draw", "check_dropout", "apply_keep", "rate"]

Config = FlashConfig | TransformerConfig | LMConfig


def rate(config: Config) -> float:
    """p: the dropout rate of a layer, block or LM config (an LM's is its block's)."""
    block = config.block if isinstance(config, LMConfig) else config
    return float(block.dropout)


def _block_shapes(config: FlashConfig | TransformerConfig, b, t: int) -> dict[str, tuple]:
    d = config.dim
    if isinstance(config, TransformerConfig):
        return {
            "attn": (b, config.heads, t, t),
            "attn_out": (b, t, d),
            "ffn_out": (b, t, d),
        }
    if config.kind == "flash":
        c = config.chunk_size
        return {"attn": (b, -(-t // c), c, c), "out": (b, t, d)}
    return {"attn": (b, t, t), "out": (b, t, d)}


def dropout_shapes(config: Config, b, t: int) -> dict[str, tuple]:
    """{site: shape} of the keep-masks one call on (b, t) inputs needs; {} when p = 0.

    b may be None (a batch size unknown at trace time); it is then None in the shapes too.
    """
    if rate(config) == 0.0:
        return {}
    if isinstance(config, LMConfig):
        one = _block_shapes(config.block, b, t)
        return {
            f"layers.{i}.{site}": shape
            for i in range(config.num_layers)
            for site, shape in one.items()
        }
    if not isinstance(config, (FlashConfig, TransformerConfig)):
        raise TypeError(f"dropout_shapes takes a flashcore config, got {type(config).__name__}")
    return _block_shapes(config, b, t)


def draw(
    config: Config, b, t: int, bernoulli: Callable[[str, tuple, float], object]
) -> dict | None:
    """Keep-masks for one call, drawn by ``bernoulli(site, shape, keep_prob)`` -> (shape) bool
    (a backend's native generator; True with probability ``keep_prob`` = 1 - p). None when the
    config needs none (p = 0)."""
    shapes = dropout_shapes(config, b, t)
    if not shapes:
        return None
    keep = 1.0 - rate(config)
    return {site: bernoulli(site, shape, keep) for site, shape in shapes.items()}


def _same_shape(got: tuple, want: tuple) -> bool:
    if len(got) != len(want):
        return False
    return all(g is None or w is None or g == w for g, w in zip(got, want))


def check_dropout(dropout: dict | None, config: Config, b, t: int) -> dict | None:
    """Validate keep-masks for a call on (b, t) inputs; returns them, or None for no dropout.

    ValueError when a site is missing or unexpected (the sites are exactly those of
    :func:`dropout_shapes`; with p = 0 only an empty dict is accepted) or a shape is wrong;
    TypeError when a mask is not bool.
    """
    if dropout is None:
        return None
    if not isinstance(dropout, dict):
        raise TypeError(
            f"dropout must be a dict of keep-masks or None, got {type(dropout).__name__}"
        )
    want = dropout_shapes(config, b, t)
    if not want:
        if dropout:
            raise ValueError(
                f"dropout masks {sorted(dropout)} were given but the config has dropout=0; "
                "pass dropout=None (or set the config's dropout)"
            )
        return None
    missing, extra = sorted(set(want) - set(dropout)), sorted(set(dropout) - set(want))
    if missing or extra:
        raise ValueError(
            f"dropout masks must be exactly {sorted(want)}; missing {missing}, unexpected {extra}"
        )
    for site, shape in want.items():
        keep = dropout[site]
        got = tuple(keep.shape)
        if not _same_shape(got, shape):
            raise ValueError(f"dropout mask {site!r} must have shape {shape}, got {got}")
        if dtype_name(keep.dtype) != "bool":
            raise TypeError(
                f"dropout mask {site!r} must be bool (True = keep), got {dtype_name(keep.dtype)}"
            )
    return dropout


def apply_keep(x, keep, p: float, xp):
    """x * keep / (1 - p). x: any shape; keep: bool, x's shape -> x's shape and dtype."""
    return x * (xp.astype(keep, x.dtype) * (1.0 / (1.0 - p)))
