"""The vectorized spec against the loop-based implementation in naive.py (float64, up to the
order of the sums: the reorder bound of conformance/tolerances.py)."""

import itertools

import naive
import numpy as np
import pytest

import flashcore as fc
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction


def _params(cfg, seed):
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, 0.3, v.shape) for k, v in fc.init(cfg, seed, np.float64).items()}


MASKS = {
    "none": (None, None),
    "pad+holes": (np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1, 1, 1]], bool), None),
    "packed": (None, np.array([[0, 0, 1, 1, 1, 1, 2, 2], [5, 5, 5, 5, 5, 3, 3, 3]])),
    "packed+pad": (
        np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1, 1, 1]], bool),
        np.array([[0, 0, 1, 1, 1, 1, 2, 2], [5, 5, 5, 5, 5, 3, 3, 3]]),
    ),
}

OPTIONS = list(
    itertools.product(
        ["flash", "gau"],
        [False, True],
        ["relu2", "laplace", "softmax_plus"],
        ["half", "interleaved"],
        ["learned", "t5", "none"],
    )
)


@pytest.mark.parametrize("kind,causal,attention,rope,bias", OPTIONS)
@pytest.mark.parametrize("masks", list(MASKS))
def test_layer_matches_naive(kind, causal, attention, rope, bias, masks):
    variants = [
        dict(linear_norm="sum", token_shift=False, norm="scale"),
        dict(linear_norm="mean", token_shift=True, norm="layer"),
        dict(linear_norm="sum" if causal else "length", norm="scale", norm_eps_mode="clamp",
             bias_before_scale=True, length_mode="array"),
        dict(linear_norm="sum" if causal else "length", norm="rms", norm_eps_mode="clamp"),
    ]  # fmt: skip
    for variant in variants:
        if kind == "gau":  # linear_norm is FLASH's alone (FlashConfig refuses it on GAU)
            variant = {**variant, "linear_norm": "sum"}
        cfg = fc.FlashConfig(
            dim=6, kind=kind, qk_dim=4, expansion=1, chunk_size=3, causal=causal,
            attention=attention, rope=rope, rel_bias=bias, max_len=12,
            t5_buckets=8, t5_max_distance=10, **variant,
        )  # fmt: skip
        p = _params(cfg, 3)
        x = np.random.default_rng(4).normal(size=(2, 8, 6))
        mask, seg = MASKS[masks]
        spec = (fc.flash if kind == "flash" else fc.gau)(
            p, x, config=cfg, mask=mask, segment_ids=seg
        )
        ref = (naive.flash if kind == "flash" else naive.gau)(p, x, cfg, mask, seg)
        assert_close(spec, ref, reorder=longest_reduction(cfg, x.shape[1]), err_msg=str(variant))


@pytest.mark.parametrize("norm", ["scale", "rms", "layer"])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_matches_naive(norm, causal):
    cfg = fc.TransformerConfig(dim=8, heads=2, norm=norm, causal=causal)
    p = _params(cfg, 5)
    x = np.random.default_rng(6).normal(size=(2, 8, 8))
    mask, seg = MASKS["packed+pad"]
    spec = fc.transformer_block(p, x, config=cfg, mask=mask, segment_ids=seg)
    ref = naive.transformer_block(p, x, cfg, mask, seg)
    assert_close(spec, ref, reorder=longest_reduction(cfg, x.shape[1]))


@pytest.mark.parametrize(
    "rows", [(0, 8, 8), (3, 6, 8), (3, 6, 6)], ids=["all", "mid", "causal-cut"]
)
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("causal", [False, True])
def test_fused_softmax_mask_matches_the_loop_and_leaves_no_row_empty(causal, masks, rows):
    """flashcore.lm.fused_softmax_allowed for queries start..stop against keys 0..keys, against its
    definition written as a loop: (j <= i when causal) and key j real and one segment, or j == i
    when there is a mask. Every real query keeps a key, and with a mask every query does."""
    start, stop, keys = rows
    cfg = fc.TransformerConfig(dim=8, heads=2, causal=causal)
    mask, seg = MASKS[masks]
    b = 2
    got = fc.lm.fused_softmax_allowed(
        cfg,
        np.arange(start, stop),
        np.arange(keys),
        None if mask is None else mask[:, :keys],
        None if seg is None else seg[:, :keys],
        None if seg is None else seg[:, start:stop],
        xp=np,
    )
    if mask is None and seg is None and not causal:
        assert got is None
        return
    got = np.broadcast_to(got, (b, 1, stop - start, keys))
    for row, i, j in itertools.product(range(b), range(start, stop), range(keys)):
        ok = (not causal or j <= i) and (mask is None or mask[row, j])
        ok = ok and (seg is None or seg[row, i] == seg[row, j])
        ok = ok or (mask is not None and i == j)
        assert bool(got[row, 0, i - start, j]) == ok, (row, i, j)
    assert got.any(axis=-1).all(), "a query row has no allowed key"  # (keys >= stop here)


@pytest.mark.parametrize("block", ["flash", "gau", "transformer"])
@pytest.mark.parametrize(
    "lm_opts",
    [
        dict(tie_embeddings=True),
        dict(tie_embeddings=False),
        dict(tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal"),
    ],
    ids=["tied", "untied", "peer-options"],
)
def test_lm_loss_matches_naive(block, lm_opts):
    if block == "transformer":
        bcfg = fc.TransformerConfig(dim=8, heads=2)
    else:
        bcfg = fc.FlashConfig(dim=8, kind=block, qk_dim=4, chunk_size=3, causal=True, max_len=16)
    cfg = fc.LMConfig(block=bcfg, vocab_size=7, num_layers=2, **lm_opts)
    p = _params(cfg, 7)
    rng = np.random.default_rng(8)
    tok, tgt = rng.integers(0, 7, (2, 8)), rng.integers(0, 7, (2, 8))
    mask = MASKS["pad+holes"][0]
    spec = fc.lm_loss(p, tok, tgt, config=cfg, mask=mask)
    ref = naive.lm_loss(p, tok, tgt, cfg, mask)
    assert_close(float(spec), ref, reorder=longest_reduction(cfg, tok.size))
