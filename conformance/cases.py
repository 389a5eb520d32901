"""The fixed grid of golden cases: every option of the spec, at tiny sizes.

Each :class:`Case` is fully determined by its fields: the config, the batch and time sizes, the
mask / segment pattern and a seed from which inputs, weights and the loss cotangent are drawn.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

import flashcore as fc
from flashcore.peers.gau_alpha import LAYER_OPTIONS

__all__ = ["Case", "CASES", "case_by_name", "make_inputs", "make_params"]

D, S, C = 16, 8, 4  # model width, shared qk width, chunk size of the golden grid
VOCAB = 19


@dataclass(frozen=True)
class Case:
    """One golden case. ``kind``: flash | gau | transformer | lm; ``group`` names the matrix row."""

    name: str
    group: str
    config: fc.FlashConfig | fc.TransformerConfig | fc.LMConfig
    batch: int = 2
    time: int = 9
    mask: str = "none"  # none | pad (row 0 right-padded) | holes (scattered padding)
    segments: str = "none"  # none | packed (row 0 holds three sequences)

    @property
    def kind(self) -> str:
        if isinstance(self.config, fc.LMConfig):
            return "lm"
        return self.config.kind

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def make_inputs(case: Case) -> dict[str, np.ndarray]:
    """Deterministic inputs of a case: x or tokens/targets, mask, segment_ids, cotangent."""
    rng = np.random.default_rng(case.seed)
    b, t = case.batch, case.time
    out: dict[str, np.ndarray] = {}
    if case.kind == "lm":
        out["tokens"] = rng.integers(0, VOCAB, (b, t)).astype(np.int64)
        out["targets"] = rng.integers(0, VOCAB, (b, t)).astype(np.int64)
    else:
        out["x"] = rng.normal(0.0, 1.0, (b, t, case.config.dim))
        out["cotangent"] = rng.normal(0.0, 1.0, (b, t, case.config.dim))
    if case.mask == "pad":
        mask = np.ones((b, t), bool)
        mask[0, t - max(1, t // 3) :] = False
        out["mask"] = mask
    elif case.mask == "holes":
        mask = rng.random((b, t)) > 0.3
        mask[:, 0] = True
        out["mask"] = mask
    if case.segments == "packed":
        seg = np.zeros((b, t), np.int64)
        cut1, cut2 = max(1, t // 3), max(2, (2 * t) // 3 + 1)
        seg[0, cut1:cut2] = 1
        seg[0, cut2:] = 2
        if b > 1:
            seg[1, :] = 7
        out["segment_ids"] = seg
    types = getattr(case.config, "type_vocab_size", 0)
    if types:  # token types (a separate stream: other inputs do not move)
        out["token_type_ids"] = np.random.default_rng(case.seed + 3).integers(0, types, (b, t))
    shapes = fc.dropout.dropout_shapes(case.config, b, t)
    if shapes:  # dropout cases: fixed keep-masks (a separate stream: other inputs do not move)
        keep = 1.0 - fc.dropout.rate(case.config)
        drng = np.random.default_rng(case.seed + 2)
        for site, shape in shapes.items():
            out[f"dropout/{site}"] = drng.random(shape) < keep
    return out


def make_params(case: Case) -> dict[str, np.ndarray]:
    """Canonical float64 weights: the initializer plus noise, so that every term is exercised.

    The scale-offset weights get more noise than the paper's N(0, 0.02) init, so that Q K^T / C is
    as large as the relative bias and every entry of the attention matrices matters (with tiny
    Q, K the bias alone would decide which relu^2 entries are nonzero, and a shifted causal mask
    could go unnoticed).
    """
    params = fc.init(case.config, seed=case.seed % 1000, dtype=np.float64)
    rng = np.random.default_rng(case.seed + 1)
    noise = {"qk.gamma": 1.0, "qk.beta": 0.3, "rel_bias.weight": 0.1}

    def std(name: str) -> float:
        return next((v for k, v in noise.items() if name.endswith(k)), 0.3)

    return {k: v + rng.normal(0.0, std(k), v.shape) for k, v in params.items()}


# GAU-alpha's layer options, all at once (the importer's, flashcore.peers.gau_alpha), on any
# layer kind, causal or not
GAU_ALPHA = {k: v for k, v in LAYER_OPTIONS.items() if k not in ("kind", "causal")}


def _flash(**kw) -> fc.FlashConfig:
    # init="paper": the goldens' weights are that start plus noise (make_params), as they were
    # generated before FlashConfig.init existed; the start changes no computation
    base = dict(
        dim=D, qk_dim=S, chunk_size=C, max_len=32, t5_buckets=8, t5_max_distance=16, init="paper"
    )
    base.update(kw)
    return fc.FlashConfig(**base)


def _grid() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    # FLASH and GAU: causal or not, T below / equal / not a multiple / many times C, and T = 1.
    for kind in ("flash", "gau"):
        for causal in (False, True):
            tag = "causal" if causal else "bidir"
            for t, label in ((3, "T<C"), (4, "T=C"), (9, "T%C"), (17, "T>>C"), (1, "T=1")):
                add(
                    Case(
                        f"{kind}-{tag}-{label}",
                        f"{kind}-shapes",
                        _flash(kind=kind, causal=causal),
                        time=t,
                    )
                )
            # Options, one at a time, on a T that is not a multiple of C.
            options = {
                "laplace": dict(attention="laplace"),
                "softmax_plus": dict(attention="softmax_plus"),
                "rope-interleaved": dict(rope="interleaved"),
                "rope-partial": dict(rope="interleaved", rope_dims=4),
                "rope-none": dict(rope="none"),
                "bias-t5": dict(rel_bias="t5", bias_scale=2.0),
                "bias-none": dict(rel_bias="none"),
                "norm-layer": dict(norm="layer"),
                "norm-rms": dict(norm="rms"),
                "token-shift": dict(token_shift=True),
                "norm-clamp": dict(norm_eps_mode="clamp"),
                "bias-before-scale": dict(rel_bias="t5", bias_scale=3.0, bias_before_scale=True),
                "post-norm": dict(norm_position="post"),
                "norm-free": dict(norm="rms", norm_affine=False),
                "no-bias": dict(use_bias=False),
                "gau-alpha": GAU_ALPHA,
            }
            if kind == "flash":
                options["linear-mean"] = dict(linear_norm="mean")
                if not causal:
                    options["linear-length"] = dict(linear_norm="length")
            else:
                options["fixed-length"] = dict(fixed_length=12)
            for label, kw in options.items():
                add(
                    Case(
                        f"{kind}-{tag}-{label}",
                        f"{kind}-options",
                        _flash(kind=kind, causal=causal, **kw),
                        time=11,
                    )
                )
            # Masks and packed segments.
            for label, mask, seg, opts in (
                ("pad", "pad", "none", {}),
                ("holes", "holes", "none", {}),
                ("packed", "none", "packed", {}),
                ("packed+pad", "pad", "packed", {}),
                ("gau-alpha-holes", "holes", "none", GAU_ALPHA),
            ):
                add(
                    Case(
                        f"{kind}-{tag}-{label}",
                        f"{kind}-masks",
                        _flash(kind=kind, causal=causal, **opts),
                        time=14,
                        mask=mask,
                        segments=seg,
                    )
                )
            length_opts = dict(length_mode="array")
            if kind == "flash" and not causal:
                length_opts["linear_norm"] = "length"
            add(
                Case(
                    f"{kind}-{tag}-pad-length-array",
                    f"{kind}-masks",
                    _flash(kind=kind, causal=causal, **length_opts),
                    time=14,
                    mask="pad",
                )
            )
            if kind == "flash" and not causal:
                add(
                    Case(
                        "flash-bidir-packed+pad-length",
                        "flash-masks",
                        _flash(linear_norm="length"),
                        time=14,
                        mask="pad",
                        segments="packed",
                    )
                )
            if kind == "flash":
                add(
                    Case(
                        f"flash-{tag}-packed-mean",
                        "flash-masks",
                        _flash(causal=causal, linear_norm="mean", token_shift=True),
                        time=14,
                        mask="pad",
                        segments="packed",
                    )
                )
    # The Transformer++ baseline block.
    for causal in (False, True):
        tag = "causal" if causal else "bidir"
        tcfg = fc.TransformerConfig(dim=D, heads=2, causal=causal)
        add(Case(f"transformer-{tag}", "transformer", tcfg, time=7))
        add(
            Case(
                f"transformer-{tag}-packed+pad",
                "transformer",
                tcfg,
                time=10,
                mask="pad",
                segments="packed",
            )
        )
    # Whole language models.
    lm_blocks = {
        "flash": _flash(causal=True),
        "gau": _flash(kind="gau", causal=True),
        "transformer": fc.TransformerConfig(dim=D, heads=2, causal=True),
    }
    for label, block in lm_blocks.items():
        add(
            Case(
                f"lm-{label}",
                "lm",
                fc.LMConfig(block=block, vocab_size=VOCAB, num_layers=2),
                time=10,
            )
        )
    add(
        Case(
            "lm-flash-untied-pad",
            "lm",
            fc.LMConfig(
                block=_flash(causal=True, norm="layer"),
                vocab_size=VOCAB,
                num_layers=2,
                tie_embeddings=False,
            ),
            time=10,
            mask="pad",
        )
    )
    # flash-pytorch's FLASHTransformer options, all at once.
    peer = _flash(
        causal=True,
        rope="interleaved",
        rope_dims=4,
        rel_bias="t5",
        bias_scale=S**0.5,
        norm_eps_mode="clamp",
        token_shift=True,
    )
    add(
        Case(
            "lm-flash-peer-options",
            "lm",
            fc.LMConfig(
                block=peer,
                vocab_size=VOCAB,
                num_layers=2,
                tie_embeddings=False,
                head_bias=True,
                final_norm="layer",
                abs_pos="scaled_sinusoidal",
            ),
            time=10,
            mask="pad",
        )
    )
    # GAU-alpha (flashcore.peers.gau_alpha): a bidirectional masked LM with token types, a
    # parameter-free normed embedding and no final norm; and the embedding options with weights.
    for label, block, embed, types, mask in (
        ("gau-alpha", _flash(kind="gau", **GAU_ALPHA), "rms", 2, "pad"),
        ("flash-types-embed-norm", _flash(causal=True, norm_position="post"), "layer", 3, "none"),
    ):
        lm = fc.LMConfig(block=block, vocab_size=VOCAB, num_layers=2, final_norm="none",
                         embed_norm=embed, type_vocab_size=types)  # fmt: skip
        add(Case(f"lm-{label}", "lm", lm, time=10, mask=mask))
    # Dropout with given keep-masks (flashcore.dropout): every site of every block kind.
    p = 0.25
    for label, cfg, t, mask in (
        ("gau-causal", _flash(kind="gau", causal=True, dropout=p), 9, "none"),
        ("gau-bidir-pad", _flash(kind="gau", dropout=p), 11, "pad"),
        ("gau-alpha-pad", _flash(kind="gau", dropout=p, **GAU_ALPHA), 11, "pad"),
        ("flash-causal", _flash(causal=True, dropout=p), 9, "none"),
        ("flash-bidir-pad", _flash(dropout=p, linear_norm="mean"), 11, "pad"),
        ("transformer-causal", fc.TransformerConfig(dim=D, heads=2, dropout=p), 7, "none"),
    ):
        add(Case(f"dropout-{label}", "dropout", cfg, time=t, mask=mask))
    for label, block in lm_blocks.items():
        cfg = fc.LMConfig(block=block.replace(dropout=p), vocab_size=VOCAB, num_layers=2)
        add(Case(f"dropout-lm-{label}", "dropout", cfg, time=10))
    return cases


CASES: list[Case] = _grid()
_BY_NAME = {c.name: c for c in CASES}
assert len(_BY_NAME) == len(CASES), "case names must be unique"


def case_by_name(name: str) -> Case:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no golden case named {name!r}") from None
