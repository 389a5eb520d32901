"""Flax NNX modules: GAU, FLASH, the Transformer++ block and the LM.

Each module holds its parameters natively as ``nnx.Param`` under Flax-style names (kernels
``[in, out]``, norms ``scale`` / ``bias``, embeddings ``embedding``) and calls the spec through
:mod:`flashcore.jax.functional`. The map to canonical names is the explicit table
:func:`naming_table` ``{canonical: (native_path, transpose)}``; :meth:`load_canonical` and
:meth:`to_canonical` go through it and nothing else.

    model = FLASH(cfg, rngs=nnx.Rngs(0))                   # or FLASH(cfg, params=canonical_dict)
    y = model(x, mask=None, segment_ids=None)              # (b, t, d) -> (b, t, d)
    model.load_canonical(params); params = model.to_canonical()

Dropout (``config.dropout`` > 0) follows NNX's ``nnx.Dropout``: modules start in training mode
(``deterministic=False``); ``model.eval()`` sets ``deterministic=True`` (exactly the deterministic
layer) and ``model.train()`` back. In training mode each call draws fresh keep-masks
(:func:`flashcore.jax.functional.dropout_masks`) from the module's ``dropout`` stream: forked from
``rngs`` at construction (``rngs=nnx.Rngs(0, dropout=1)``; without a ``dropout`` stream the
default one), or from ``dropout_rngs=`` when built from ``params=``; a call may pass
``deterministic=`` and ``rngs=`` (an Rngs, an RngStream or a key) that take precedence, or
``dropout=`` keep-masks to apply as given.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import flashcore as fc
from flashcore.config import FlashConfig, LMConfig, TransformerConfig

from . import functional

__all__ = ["naming_table", "GAU", "FLASH", "TransformerBlock", "LM", "Group", "block_class"]

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


class Group(nnx.Module):
    """A named group of native parameters (one sub-layer: ``uvz``, ``norm``, ...)."""


def _get(module: nnx.Module, path: str) -> nnx.Param:
    node = module
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _place(module: nnx.Module, path: str, value: jax.Array) -> None:
    *groups, leaf = path.split(".")
    node = module
    for part in groups:
        if not hasattr(node, part):
            setattr(node, part, Group())
        node = getattr(node, part)
    setattr(node, leaf, nnx.Param(value))


def _native(value: jax.Array, transpose: bool) -> jax.Array:
    return value.T if transpose else value


def _cast_all(params: dict, dtypes: dict) -> dict[str, jax.Array]:
    """{name: jnp array in ``dtypes[name]``} (None: keep the dtype) for every name of ``dtypes``;
    ValueError naming every value that cannot be converted (and nothing returned)."""
    out, errors = {}, []
    for name, dtype in dtypes.items():
        try:
            out[name] = jnp.asarray(params[name], dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as err:
            errors.append(f"{name}: cannot be converted to a {dtype or 'jax'} array: {err}")
    if errors:
        raise ValueError("parameters cannot be converted: " + "; ".join(errors))
    return out


def _batch_time(tokens) -> tuple[int, int]:
    """(b, t) of token ids for drawing masks; a wrong rank is left to the spec's own check."""
    shape = tuple(tokens.shape) + (1, 1)
    return shape[0], shape[1]


def _fork(rngs) -> nnx.RngStream | None:
    """The dropout stream of ``rngs`` (an Rngs: its ``dropout`` stream, else its default; an
    RngStream), forked; None for None."""
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return None
    raise TypeError(f"dropout rngs must be an nnx.Rngs, nnx.RngStream or None, got {type(rngs)}")


class _Canonical(nnx.Module):
    """Shared: construction from canonical params and the canonical <-> native round trip."""

    config: FlashConfig | TransformerConfig | LMConfig

    def _dropout_init(self, rngs, dropout_rngs, deterministic: bool) -> None:
        self.deterministic = deterministic
        self.dropout_rngs = nnx.data(_fork(dropout_rngs if dropout_rngs is not None else rngs))

    def _masks(self, b: int, t: int, dropout, deterministic, rngs) -> dict | None:
        """The keep-masks of one call: ``dropout`` if given, None when deterministic or p = 0,
        else fresh ones from ``rngs`` (the call's) or the module's dropout stream."""
        if dropout is not None:
            return dropout
        det = self.deterministic if deterministic is None else deterministic
        if det or fc.dropout.rate(self.config) == 0.0:
            return None
        source = rngs if rngs is not None else self.dropout_rngs
        if isinstance(source, nnx.Rngs):
            key = source["dropout"]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif isinstance(source, jax.Array):
            key = source
        elif source is None:
            raise ValueError(
                f"{type(self).__name__}: dropout={fc.dropout.rate(self.config)} in training mode "
                "(deterministic=False) needs a dropout stream: build with rngs= or dropout_rngs=, "
                "pass rngs= to the call, or call .eval() for the deterministic layer"
            )
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a key, got {type(source)}")
        return functional.dropout_masks(self.config, key, b, t)

    def _build(self, config, rngs: nnx.Rngs | None, params: dict | None, dtype) -> dict:
        """Check and return the canonical params to build from (given, or drawn from ``rngs``)."""
        if (rngs is None) == (params is None):
            raise TypeError(f"{type(self).__name__} takes exactly one of rngs= or params=")
        self.config = config
        if params is None:
            return functional.init(config, rngs.params(), dtype or jnp.float32)
        fc.check_params(params, config)
        return _cast_all(params, dict.fromkeys(params, dtype))

    @property
    def table(self) -> Table:
        """The naming table of this module's config (see :func:`naming_table`)."""
        return naming_table(self.config)

    def to_canonical(self) -> dict[str, jax.Array]:
        """{canonical name: array}, exactly the names and shapes of ``param_spec(config)``."""
        return {k: _native(_get(self, p)[...], t) for k, (p, t) in self.table.items()}

    def load_canonical(self, params: dict) -> None:
        """Set every parameter from a canonical dict (any array type), cast to the module's dtypes.

        Raises ValueError naming missing / unexpected names, bad shapes, non-floating values or
        values that cannot be cast; every value is checked and cast first, so then nothing changes.
        """
        fc.check_params(params, self.config)
        dtypes = {name: _get(self, path)[...].dtype for name, (path, _) in self.table.items()}
        cast = _cast_all(params, dtypes)
        new = {}
        for name, (path, transpose) in self.table.items():
            var = _get(self, path)
            value = _native(cast[name], transpose)
            if value.shape != var[...].shape:  # unreachable unless the table is wrong
                raise ValueError(f"{name} -> {path}: shape {value.shape} != {var[...].shape}")
            new[path] = value
        for path, value in new.items():
            _get(self, path).set_value(value)


class _Layer(_Canonical):
    """A single layer or block: canonical params placed by the naming table."""

    def __init__(
        self,
        config,
        *,
        rngs=None,
        params=None,
        dtype=None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        params = self._build(config, rngs, params, dtype)
        for name, (path, transpose) in self.table.items():
            _place(self, path, _native(params[name], transpose))
        self._dropout_init(rngs, dropout_rngs, deterministic)

    def __call__(
        self,
        x: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
    ) -> jax.Array:
        """x: (b, t, d); mask: (b, t) bool; segment_ids: (b, t) ints -> (b, t, d). dropout:
        keep-masks to apply; deterministic / rngs: override the module's (see the module doc)."""
        masks = self._masks(x.shape[0], x.shape[1], dropout, deterministic, rngs)
        return functional.apply(
            self.to_canonical(),
            x,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=getattr(self, "core", None),
            dropout=masks,
        )


class _FlashLayer(_Layer):
    kind: str

    def __init__(
        self,
        config: FlashConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        core: Callable | None = None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, FlashConfig) or config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a FlashConfig with kind={self.kind!r}")
        super().__init__(
            config,
            rngs=rngs,
            params=params,
            dtype=dtype,
            dropout_rngs=dropout_rngs,
            deterministic=deterministic,
        )
        self.core = core


class GAU(_FlashLayer):
    """Gated attention unit (FLASH-Quad). Params: norm, uvz (d -> 2e+s), qk (2, s), rel_bias, out."""

    kind = "gau"


class FLASH(_FlashLayer):
    """Mixed-chunk FLASH layer. Params: norm, uvz (d -> 2e+s), qk (4, s), rel_bias, out.

    ``core``: the mixed-chunk attention core (None: :func:`flashcore.jax.kernels.flash_core`, the
    Pallas kernel on GPU / TPU where it applies, else the spec's).
    """

    kind = "flash"


class TransformerBlock(_Layer):
    """The Transformer++ baseline block. Params: attn_norm, attn.{qkv,out}, ffn_norm, ffn.{gate,up,down}."""

    def __init__(
        self,
        config: TransformerConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, TransformerConfig):
            raise ValueError("TransformerBlock needs a TransformerConfig")
        super().__init__(
            config,
            rngs=rngs,
            params=params,
            dtype=dtype,
            dropout_rngs=dropout_rngs,
            deterministic=deterministic,
        )


def block_class(config: FlashConfig | TransformerConfig | LMConfig) -> type[_Canonical]:
    """The module class of a config: FLASH, GAU, TransformerBlock or LM."""
    if isinstance(config, LMConfig):
        return LM
    if isinstance(config, TransformerConfig):
        return TransformerBlock
    return FLASH if config.kind == "flash" else GAU


class LM(_Canonical):
    """Causal LM: embed (v, d), ``layers`` (nnx.List of blocks), final_norm, head (untied only),
    abs_pos (scaled sinusoidal only). ``core``: FLASH layers' mixed-chunk core, as in FLASH."""

    def __init__(
        self,
        config: LMConfig,
        *,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
        dtype=None,
        core: Callable | None = None,
        dropout_rngs=None,
        deterministic: bool = False,
    ):
        if not isinstance(config, LMConfig):
            raise ValueError("LM needs an LMConfig")
        params = self._build(config, rngs, params, dtype)
        block = block_class(config.block)
        self.layers = nnx.List(
            [
                block(config.block, params=fc.subtree(params, f"layers.{i}."))
                for i in range(config.num_layers)
            ]
        )
        for name, (path, transpose) in self.table.items():
            if not name.startswith("layers."):
                _place(self, path, _native(params[name], transpose))
        self.core = core
        self._dropout_init(rngs, dropout_rngs, deterministic)

    @classmethod
    def from_pretrained(cls, name_or_path, *, dtype=None, core: Callable | None = None, **hub):
        """An LM from a pretrained directory (config.json + canonical model.safetensors, as
        transformers' ``save_pretrained`` via flashcore.torch.hf and ``flashcore export`` write
        it) or a Hub id (``hub``: see :func:`flashcore.pretrained.resolve`). ``dtype``: cast the
        weights (default: the file's). Needs no transformers."""
        from flashcore import pretrained

        params, config = pretrained.load(name_or_path, **hub)
        return cls(config, params=params, dtype=dtype, core=core)

    def __call__(
        self,
        tokens: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
    ) -> jax.Array:
        """tokens: (b, t) ints -> logits (b, t, v). dropout / deterministic / rngs: as for a
        layer; the masks are ``layers.{i}.<site>``."""
        return functional.logits(
            self.to_canonical(),
            tokens,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=self.core,
            dropout=self._masks(*_batch_time(tokens), dropout, deterministic, rngs),
        )

    def prefill(
        self, tokens, *, piece: int = 4096, state: dict | None = None, last_only: bool = False
    ):
        """Streamed prefill of a causal FLASH LM (:func:`flashcore.jax.decode.prefill`, jitted
        pieces with this LM's core): tokens (b, T) -> (logits (b, T, v), or (b, v) with
        ``last_only``; a decoding state for :func:`flashcore.jax.decode.decode_step`)."""
        from .decode import prefill

        return prefill(
            self.to_canonical(),
            tokens,
            config=self.config,
            piece=piece,
            state=state,
            last_only=last_only,
            core=self.core,
        )

    def loss(
        self,
        inputs: jax.Array,
        targets: jax.Array,
        mask=None,
        segment_ids=None,
        *,
        dropout=None,
        deterministic: bool | None = None,
        rngs=None,
    ):
        """Mean next-token cross-entropy (nats) of ``targets`` given ``inputs``, both (b, t): ().
        dropout / deterministic / rngs: as for :meth:`__call__`."""
        return functional.loss(
            self.to_canonical(),
            inputs,
            targets,
            config=self.config,
            mask=mask,
            segment_ids=segment_ids,
            core=self.core,
            dropout=self._masks(*_batch_time(inputs), dropout, deterministic, rngs),
        )
