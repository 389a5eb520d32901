"""Frozen configuration dataclasses for the GAU / FLASH layers, the Transformer++ block and the LM.

Every field is validated in ``__post_init__`` (a FlashConfig per kind: each field's own check,
the rules both kinds share, the kind's own rules, then the fields only the other kind reads); an
invalid value raises ``ValueError`` naming the field.
Configs round-trip through plain dicts (``to_dict`` / ``config_from_dict``) so that they can be stored
as JSON in the metadata of a canonical weight file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "FlashConfig",
    "TransformerConfig",
    "LMConfig",
    "config_from_dict",
    "config_kind",
    "ClassRegistry",
]

LayerKind = Literal["flash", "gau"]
Attention = Literal["relu2", "laplace", "softmax_plus"]
Rope = Literal["half", "interleaved", "none"]
RelBias = Literal["learned", "t5", "none"]
Norm = Literal["scale", "layer", "rms"]
AbsPos = Literal["none", "scaled_sinusoidal"]
LinearNorm = Literal["sum", "mean", "length"]
EpsMode = Literal["add", "clamp"]
LengthMode = Literal["real", "array", "prefix"]
NormPosition = Literal["pre", "post"]
Start = Literal["uniform", "paper"]


def _check_int(obj: Any, name: str, low: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{type(obj).__name__}.{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{type(obj).__name__}.{name} must be >= {low}, got {value}")


def _check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {choices}, got {value!r}")


def _check_bool(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise ValueError(f"{type(obj).__name__}.{name} must be a bool, got {value!r}")


def _check_positive_float(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{type(obj).__name__}.{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


def _check_number(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{type(obj).__name__}.{name} must be a number, got {value!r}")


def _check_rate(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{type(obj).__name__}.{name} must be in [0, 1), got {value!r}")


def _int_at_least(low: int, optional: bool = False) -> Callable[[Any, str], None]:
    def check(obj: Any, name: str) -> None:
        if not (optional and getattr(obj, name) is None):
            _check_int(obj, name, low)

    return check


def _choice(literal: Any) -> Callable[[Any, str], None]:
    return lambda obj, name: _check_choice(obj, name, get_args(literal))


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, tagged with the class name; inverse of :func:`config_from_dict`."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _DictMixin) else value
        return out

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class FlashConfig(_DictMixin):
    """One GAU (``kind="gau"``, FLASH-Quad) or FLASH (``kind="flash"``, mixed-chunk) layer.

    Widths: d = ``dim``, e = ``expansion * dim`` (must be an integer), s = ``qk_dim``, C = ``chunk_size``.

    Fields per kind: GAU alone reads ``fixed_length``, ``max_len`` and ``length_mode='prefix'``;
    FLASH alone reads ``chunk_size`` and ``linear_norm`` (and ``length_mode`` 'real' / 'array'
    only with ``linear_norm='length'``); both read the rest. A value only the other kind reads
    (``fixed_length`` not None, ``linear_norm`` other than 'sum', ``length_mode='prefix'``)
    raises ValueError naming the field and the kinds. ``chunk_size`` on GAU, ``max_len`` on
    FLASH and ``length_mode`` on FLASH without ``linear_norm='length'`` are accepted and ignored:
    stored configs set them (``flashcore train`` writes ``--chunk`` and ``--context`` into both
    kinds).

    - ``attention``: ``relu2`` (paper), ``laplace`` (Mega), ``softmax_plus`` (GAU-alpha).
    - ``rope``: ``half`` (paper, half-split), ``interleaved`` (pairs), ``none``; ``rope_dims`` rotates
      only the first ``rope_dims`` of the s dims (None = all).
    - ``rel_bias``: ``learned`` (paper, one weight per offset, span ``max_len`` for GAU and C for
      FLASH), ``t5`` (log buckets), ``none``; the bias is multiplied by ``bias_scale``.
    - ``norm``: ``scale`` (paper's ScaleNorm), ``layer``, ``rms``.
    - ``norm_position``: ``pre`` (paper: out = x + f(Norm(x))) or ``post`` (GAU-alpha:
      out = Norm(x + f(x)); the layer reads x itself).
    - ``norm_affine``: False drops the norm's learned gain (and LayerNorm's bias): no ``norm.*``
      weights (GAU-alpha's parameter-free RMS norm is ``norm="rms", norm_affine=False``).
    - ``use_bias``: False drops the dense layers' biases and the scale-offset offsets (no
      ``hidden.bias``, ``out.bias``, ``qk.beta``; GAU-alpha).
    - ``linear_norm``: ``sum`` (paper text: chunk states K^T V / C summed), ``mean`` (averaged over
      contributing chunks) or ``length`` (non-causal only: the sum of K^T V divided by the sequence
      length n instead of C, as flash-pytorch does).
    - ``fixed_length``: GAU only; None divides the scores by the number of keys in the sequence (paper),
      an int fixes that n.
    - ``length_mode``: what "sequence length" n means for GAU's 1/n and ``linear_norm='length'``:
      ``real`` (default) counts the real keys of the query's segment, so padding and packing do not
      change results; ``array`` uses the array's T, padding included (flash-pytorch); ``prefix``
      (causal only) counts the real keys the query attends to (its own segment, up to itself), so
      a causal GAU's output at t no longer depends on how many tokens follow, and an LM of such
      layers decodes exactly with a key/value cache (:mod:`flashcore.decode`).
    - ``bias_before_scale``: add the relative bias to Q K^T before the 1/n (or 1/C) scaling
      (flash-pytorch's GAU) instead of after it (paper).
    - ``norm_eps_mode``: for scale/rms norms, ``add`` (x rsqrt(mean x^2 + eps), paper) or ``clamp``
      (x / max(sqrt(mean x^2), eps), flash-pytorch's ScaleNorm).
    - ``token_shift``: shift the first ceil(d/2) channels of the normed input one step forward.
    - ``dropout``: the rate p of GAU-alpha's dropout on the attention weights and on the output
      before the residual (:mod:`flashcore.dropout`): the spec applies the keep-masks it is
      given; backends draw them in training mode only.
    - ``init``: the start :func:`flashcore.init` draws (it changes no computation): ``uniform``
      (default) starts the relative-bias weights so that the bias term of relu^2's scores is
      L^-1/2, L = ``bias_span`` (w = L^-1/2 with bias_scale 1, the bias after the scaling), so
      that each relu^2 row starts as a uniform average of mass about 1 and the attention
      trains; ``paper`` starts them at 0, where relu^2 attention and its gradient start near 0
      and can stay dead (docs/init.md). gamma ~ N(0, 0.02^2) and beta = 0 in both; other
      attention functions start at 0 in both. A config dict without the field (written before
      it existed) reads as ``paper``.
    """

    dim: int = 512
    kind: LayerKind = "flash"
    expansion: float = 2
    qk_dim: int = 128
    chunk_size: int = 256
    causal: bool = False
    attention: Attention = "relu2"
    rope: Rope = "half"
    rope_dims: int | None = None
    rope_base: float = 10000.0
    rel_bias: RelBias = "learned"
    max_len: int = 512
    t5_buckets: int = 32
    t5_max_distance: int = 128
    bias_scale: float = 1.0
    norm: Norm = "scale"
    norm_eps: float = 1e-5
    norm_eps_mode: EpsMode = "add"
    linear_norm: LinearNorm = "sum"
    fixed_length: int | None = None
    length_mode: LengthMode = "real"
    bias_before_scale: bool = False
    token_shift: bool = False
    dropout: float = 0.0
    norm_position: NormPosition = "pre"
    norm_affine: bool = True
    use_bias: bool = True
    init: Start = "uniform"

    def __post_init__(self) -> None:
        _check_choice(self, "kind", get_args(LayerKind))  # first: the checks below depend on it
        for name, check in _FLASH_FIELDS.items():  # each field's own type and range, any kind
            check(self, name)
        _check_shared(self)
        _KIND_CHECKS[self.kind](self)
        _check_one_kind_fields(self)

    @property
    def expanded_dim(self) -> int:
        """e = expansion * dim."""
        return int(round(self.expansion * self.dim))

    @property
    def num_heads(self) -> int:
        """Scale-offset heads: 2 for GAU (q, k), 4 for FLASH (quad_q, quad_k, lin_q, lin_k)."""
        return 2 if self.kind == "gau" else 4

    @property
    def rotary_dims(self) -> int:
        """How many of the s dims RoPE rotates (0 when rope is off)."""
        if self.rope == "none":
            return 0
        return self.qk_dim if self.rope_dims is None else self.rope_dims

    @property
    def bias_span(self) -> int:
        """L: the learned relative bias covers offsets -(L-1)..(L-1) (C for FLASH, max_len for GAU)."""
        return self.chunk_size if self.kind == "flash" else self.max_len


# Each FlashConfig field's own check (its type and range), made whatever the kind, so that every
# stored value has a valid form; the rules between fields follow per kind.
_FLASH_FIELDS: dict[str, Callable[[Any, str], None]] = {
    "dim": _int_at_least(1),
    "expansion": _check_positive_float,
    "qk_dim": _int_at_least(1),
    "chunk_size": _int_at_least(1),
    "causal": _check_bool,
    "attention": _choice(Attention),
    "rope": _choice(Rope),
    "rope_dims": _int_at_least(2, optional=True),
    "rope_base": _check_positive_float,
    "rel_bias": _choice(RelBias),
    "max_len": _int_at_least(1),
    "t5_buckets": _int_at_least(2),
    "t5_max_distance": _int_at_least(1),
    "bias_scale": _check_number,
    "norm": _choice(Norm),
    "norm_eps": _check_positive_float,
    "norm_eps_mode": _choice(EpsMode),
    "linear_norm": _choice(LinearNorm),
    "fixed_length": _int_at_least(1, optional=True),
    "length_mode": _choice(LengthMode),
    "bias_before_scale": _check_bool,
    "token_shift": _check_bool,
    "dropout": _check_rate,
    "norm_position": _choice(NormPosition),
    "norm_affine": _check_bool,
    "use_bias": _check_bool,
    "init": _choice(Start),
}


def _check_shared(c: FlashConfig) -> None:
    """The rules between fields that both kinds read: the widths, RoPE and the T5 buckets."""
    e = c.expansion * c.dim
    if abs(e - round(e)) > 1e-9:
        raise ValueError(
            f"FlashConfig.expansion * dim must be an integer, got {c.expansion} * {c.dim}"
        )
    if c.rope_dims is not None:
        if c.rope_dims > c.qk_dim or c.rope_dims % 2:
            raise ValueError(
                f"FlashConfig.rope_dims must be even and <= qk_dim={c.qk_dim}, got {c.rope_dims}"
            )
    elif c.rope != "none" and c.qk_dim % 2:
        raise ValueError(f"FlashConfig.qk_dim must be even for rope, got {c.qk_dim}")
    if not c.causal and c.t5_buckets % 2:
        raise ValueError(f"FlashConfig.t5_buckets must be even when not causal, got {c.t5_buckets}")
    exact = c.t5_buckets // (2 if c.causal else 4)
    if c.t5_max_distance <= exact:
        raise ValueError(
            f"FlashConfig.t5_max_distance must exceed the {exact} exactly-bucketed offsets "
            f"(t5_buckets={c.t5_buckets}), got {c.t5_max_distance}"
        )


def _check_gau(c: FlashConfig) -> None:
    """The rules between the fields a GAU layer reads (fixed_length, length_mode, max_len)."""
    if c.length_mode == "prefix" and not c.causal:
        raise ValueError(
            "FlashConfig.length_mode='prefix' needs causal=True: it counts the keys a causal "
            "query attends to"
        )


def _check_flash(c: FlashConfig) -> None:
    """The rules between the fields a FLASH layer reads (chunk_size, linear_norm, length_mode)."""
    if c.linear_norm == "length" and c.causal:
        raise ValueError(
            "FlashConfig.linear_norm='length' needs causal=False: a causal layer cannot divide "
            "by a length that includes the future"
        )


_KIND_CHECKS: dict[str, Callable[[FlashConfig], None]] = {"gau": _check_gau, "flash": _check_flash}

# The fields (or values) only one kind reads: {field: (that kind, the values the other kind may
# hold, as it ignores them)}. A value outside those on the other kind raises ValueError.
# chunk_size (a GAU layer has no chunks), max_len (the learned bias span and decode capacity of
# GAU; FLASH's span is chunk_size) and length_mode='array' on FLASH without linear_norm='length'
# are ignored yet accepted, because stored configs set them: `flashcore train` writes --chunk
# (default 64) and --context into both kinds, the conformance goldens and tests/_cases.py set
# chunk_size=4 and max_len=32 on both, and the flash-pytorch importer writes length_mode='array'
# for causal FLASH (tests/test_stored_configs.py loads them all).
_ONE_KIND_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "fixed_length": ("gau", lambda value: value is None),
    "length_mode": ("gau", lambda value: value != "prefix"),  # FLASH: 'real' / 'array' n
    "linear_norm": ("flash", lambda value: value == "sum"),
    "chunk_size": ("flash", lambda value: True),
    "max_len": ("gau", lambda value: True),
}


def _check_one_kind_fields(c: FlashConfig) -> None:
    """A value that only the other kind reads raises, naming the field and both kinds."""
    for name, (kind, ignored) in _ONE_KIND_FIELDS.items():
        value = getattr(c, name)
        if c.kind != kind and not ignored(value):
            what = name if name != "length_mode" else f"{name}={value!r}"
            raise ValueError(
                f"FlashConfig.{what} applies to kind={kind!r} only; got {value!r} with "
                f"kind={c.kind!r}"
            )


@dataclass(frozen=True)
class TransformerConfig(_DictMixin):
    """The Transformer++ baseline block: pre-norm multi-head softmax attention with RoPE, then SwiGLU.

    ``ffn_dim`` None means round(8/3 * dim) up to a multiple of 8, so that attention (4 d^2) plus the
    FFN (3 d f) has about 12 d^2 parameters, as two GAU layers (2 * (d (2e + s) + e d) with e = 2d).
    ``dropout``: the rate p on the attention probabilities and on each branch's output before its
    residual (:mod:`flashcore.dropout`).
    """

    dim: int = 512
    heads: int = 8
    ffn_dim: int | None = None
    causal: bool = True
    rope_base: float = 10000.0
    norm: Norm = "rms"
    norm_eps: float = 1e-5
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_int(self, "dim", 1)
        _check_int(self, "heads", 1)
        if self.dim % self.heads:
            raise ValueError(
                f"TransformerConfig.heads must divide dim={self.dim}, got {self.heads}"
            )
        if (self.dim // self.heads) % 2:
            raise ValueError(
                f"TransformerConfig.heads must leave an even head width for rope, got "
                f"dim={self.dim} / heads={self.heads}"
            )
        if self.ffn_dim is not None:
            _check_int(self, "ffn_dim", 1)
        _check_bool(self, "causal")
        _check_positive_float(self, "rope_base")
        _check_choice(self, "norm", get_args(Norm))
        _check_positive_float(self, "norm_eps")
        _check_rate(self, "dropout")

    @property
    def kind(self) -> str:
        return "transformer"

    @property
    def hidden_dim(self) -> int:
        """f: the SwiGLU hidden width."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        return -(-self.dim // 3) * 8  # ceil(8 d / 3) rounded up to a multiple of 8

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class LMConfig(_DictMixin):
    """A causal language model: embedding, ``num_layers`` blocks, a final norm and an output head.

    ``block`` is a :class:`FlashConfig` (FLASH or GAU layers) or a :class:`TransformerConfig`.
    A non-causal block gives a bidirectional model (logits only: :func:`flashcore.lm_loss` and
    decoding refuse it).
    - ``final_norm``: the final norm's type (None: the block's norm type; ``none``: no final
      norm, as in GAU-alpha, whose post-norm layers end in a norm).
    - ``embed_norm``: a norm on the embedding (``none``, or a norm type; GAU-alpha: ``rms``).
      Both norms take the block's ``norm_eps``, ``norm_eps_mode`` and ``norm_affine``.
    - ``type_vocab_size``: 0 (no token types) or the number of token types (BERT's segment
      embedding): a table ``type_embed.weight`` (n, d) whose row ``token_type_ids[b, t]`` (0
      where none are given) is added to the token embedding.
    - ``tie_embeddings``: the head is the embedding transposed; ``head_bias`` adds a bias (v,).
    - ``abs_pos``: ``none`` (paper: RoPE inside the layers is enough) or ``scaled_sinusoidal``
      (flash-pytorch's FLASHTransformer: [sin(p w) | cos(p w)] * a learned scalar, added to the
      embedding; w_i = 10000^(-2i/d)).
    """

    block: FlashConfig | TransformerConfig = dataclasses.field(
        default_factory=lambda: FlashConfig(causal=True)
    )
    vocab_size: int = 256
    num_layers: int = 2
    tie_embeddings: bool = True
    head_bias: bool = False
    final_norm: Norm | Literal["none"] | None = None
    abs_pos: AbsPos = "none"
    embed_norm: Norm | Literal["none"] = "none"
    type_vocab_size: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.block, dict):
            object.__setattr__(self, "block", config_from_dict(self.block))
        if not isinstance(self.block, (FlashConfig, TransformerConfig)):
            raise ValueError(
                f"LMConfig.block must be a FlashConfig or TransformerConfig, got {self.block!r}"
            )
        _check_int(self, "vocab_size", 1)
        _check_int(self, "num_layers", 1)
        _check_bool(self, "tie_embeddings")
        _check_bool(self, "head_bias")
        if self.final_norm is not None:
            _check_choice(self, "final_norm", (*get_args(Norm), "none"))
        _check_choice(self, "abs_pos", get_args(AbsPos))
        if self.abs_pos == "scaled_sinusoidal" and self.block.dim % 2:
            raise ValueError(
                f"LMConfig.abs_pos='scaled_sinusoidal' needs an even dim, got {self.block.dim}"
            )
        _check_choice(self, "embed_norm", (*get_args(Norm), "none"))
        _check_int(self, "type_vocab_size", 0)

    @property
    def final_norm_kind(self) -> str:
        """The final norm's type: ``final_norm``, or the block's norm type when None ('none':
        no final norm)."""
        return self.final_norm or self.block.norm

    @property
    def dim(self) -> int:
        return self.block.dim


_CLASSES = {c.__name__: c for c in (FlashConfig, TransformerConfig, LMConfig)}


def config_from_dict(data: dict[str, Any]) -> FlashConfig | TransformerConfig | LMConfig:
    """Rebuild a config from :meth:`to_dict` output; unknown types or fields raise ValueError.
    A FlashConfig dict without ``init`` (older than the field) gets ``init="paper"``."""
    if not isinstance(data, dict) or data.get("type") not in _CLASSES:
        raise ValueError(f"not a flashcore config dict (missing or unknown 'type'): {data!r}")
    cls = _CLASSES[data["type"]]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k != "type"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    if cls is FlashConfig:  # written before FlashConfig.init existed: drawn from the paper's start
        kwargs.setdefault("init", "paper")
    if cls is LMConfig and isinstance(kwargs.get("block"), dict):
        kwargs["block"] = config_from_dict(kwargs["block"])
    return cls(**kwargs)


def config_kind(config: FlashConfig | TransformerConfig | LMConfig) -> str:
    """'flash', 'gau', 'transformer' or 'lm': the kind of module a config describes."""
    if isinstance(config, LMConfig):
        return "lm"
    if isinstance(config, (FlashConfig, TransformerConfig)):
        return config.kind
    raise TypeError(f"not a flashcore config: {type(config).__name__}")


class ClassRegistry:
    """A backend's module class per :func:`config_kind` (FLASH, GAU, TransformerBlock, LM), so
    that weight I/O and adapters find the class of a config without importing the modules that
    define them (no import cycle): each class registers itself with ``@registry.register(kind)``."""

    def __init__(self):
        self._classes: dict[str, type] = {}

    def register(self, kind: str):
        """Class decorator: the class for configs of ``kind``."""

        def put(cls: type) -> type:
            self._classes[kind] = cls
            return cls

        return put

    def __call__(self, config) -> type:
        """The class registered for ``config``'s kind."""
        kind = config_kind(config)
        if kind not in self._classes:
            raise LookupError(f"no module class is registered for {kind!r} configs")
        return self._classes[kind]
