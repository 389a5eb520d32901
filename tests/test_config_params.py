import dataclasses
import re

import numpy as np
import pytest

import flashcore as fc
from flashcore.conformance.tolerances import elementwise_tolerance
from flashcore.params import weight_table_markdown


@pytest.mark.parametrize(
    "field,value",
    [
        ("dim", 0),
        ("dim", 2.5),
        ("expansion", -1),
        ("expansion", 0.3),  # 0.3 * 16 is not an integer
        ("qk_dim", 0),
        ("chunk_size", 0),
        ("chunk_size", -4),
        ("causal", "yes"),
        ("attention", "softmax"),
        ("rope", "rotary"),
        ("rope_dims", 3),
        ("rope_dims", 32),
        ("rel_bias", "alibi"),
        ("norm", "batch"),
        ("linear_norm", "avg"),
        ("dropout", 1.0),
        ("fixed_length", 0),
        ("kind", "mamba"),
        ("norm_eps", 0.0),
        ("t5_buckets", 7),
        ("t5_max_distance", 4),  # with 32 buckets, 8 offsets each way are exact: 4 is too small
        ("norm_eps_mode", "max"),
        ("length_mode", "padded"),
        ("bias_before_scale", 1),
        ("norm_position", "middle"),
        ("norm_affine", 0),
        ("use_bias", "no"),
    ],
)
def test_flash_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        fc.FlashConfig(**{"dim": 16, "qk_dim": 8, field: value})


def test_causal_layers_cannot_divide_by_a_future_length():
    with pytest.raises(ValueError, match="linear_norm='length' needs causal=False"):
        fc.FlashConfig(dim=16, qk_dim=8, causal=True, linear_norm="length")


def test_other_configs_validate():
    with pytest.raises(ValueError, match="heads"):
        fc.TransformerConfig(dim=16, heads=3)
    bidir = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, causal=False), vocab_size=5)
    tokens = np.zeros((1, 3), np.int64)
    assert fc.lm_logits(fc.init(bidir), tokens, config=bidir).shape == (1, 3, 5)
    with pytest.raises(ValueError, match="final_norm"):
        fc.LMConfig(block=fc.FlashConfig(dim=16, causal=True), final_norm="group")
    with pytest.raises(ValueError, match="abs_pos"):
        fc.LMConfig(
            block=fc.FlashConfig(dim=15, qk_dim=8, causal=True), abs_pos="scaled_sinusoidal"
        )
    with pytest.raises(ValueError, match="vocab_size"):
        fc.LMConfig(block=fc.FlashConfig(dim=16, causal=True), vocab_size=0)


def test_configs_are_frozen_and_round_trip():
    cfg = fc.LMConfig(block=fc.FlashConfig(dim=16, causal=True, attention="laplace"), num_layers=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 4
    assert fc.config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="no field"):
        fc.config_from_dict({**cfg.block.to_dict(), "bogus": 1})


def test_configs_saved_before_the_gau_alpha_options_load_as_before():
    """A config dict without norm_position / norm_affine / use_bias (layers) or embed_norm /
    type_vocab_size (LMs), as run folders, weight files and goldens written before hold, loads
    with today's behaviour: pre-norm with weights, biases, no token types, no embedding norm."""
    lm = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, causal=True), vocab_size=7)
    old = lm.to_dict()
    for key in ("embed_norm", "type_vocab_size"):
        del old[key]
    for key in ("norm_position", "norm_affine", "use_bias"):
        del old["block"][key]
    assert fc.config_from_dict(old) == lm
    names = set(fc.param_spec(lm))
    assert {"layers.0.hidden.bias", "layers.0.qk.beta", "layers.0.out.bias"} <= names
    assert not {n for n in names if n.startswith(("type_embed", "embed_norm"))}


def test_gau_alpha_options_shape_the_parameters():
    block = fc.FlashConfig(dim=16, qk_dim=8, kind="gau", norm="rms", norm_affine=False,
                           use_bias=False, norm_position="post")  # fmt: skip
    assert sorted(fc.param_spec(block)) == [
        "hidden.kernel", "out.kernel", "qk.gamma", "rel_bias.weight"
    ]  # fmt: skip
    lm = fc.LMConfig(block=block, vocab_size=7, final_norm="none", embed_norm="rms",
                     type_vocab_size=3)  # fmt: skip
    top = {k: v.shape for k, v in fc.param_spec(lm).items() if not k.startswith("layers.")}
    assert top == {"embed.weight": (7, 16), "type_embed.weight": (3, 16)}
    with_weights = lm.replace(block=block.replace(norm_affine=True), embed_norm="layer")
    assert {"embed_norm.weight", "embed_norm.bias"} <= set(fc.param_spec(with_weights))
    for field, value in (("embed_norm", "batch"), ("type_vocab_size", -1), ("final_norm", "x")):
        with pytest.raises(ValueError, match=field):
            lm.replace(**{field: value})
    params = fc.init(lm)
    tokens = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="token_type_ids"):
        fc.lm_logits(params, tokens, config=lm, token_type_ids=np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="token_type_ids: token ids must be in"):
        fc.lm_logits(params, tokens, config=lm, token_type_ids=np.full((1, 4), 3))
    no_types = lm.replace(type_vocab_size=0)
    with pytest.raises(ValueError, match="type_vocab_size is 0"):
        fc.lm_logits(fc.init(no_types), tokens, config=no_types, token_type_ids=tokens)
    type0 = fc.lm_logits(params, tokens, config=lm)
    assert np.array_equal(type0, fc.lm_logits(params, tokens, config=lm, token_type_ids=tokens))


def test_paper_defaults():
    cfg = fc.FlashConfig()
    assert (cfg.expanded_dim, cfg.qk_dim, cfg.chunk_size) == (2 * cfg.dim, 128, 256)
    assert (cfg.attention, cfg.rope, cfg.rel_bias, cfg.norm, cfg.linear_norm) == (
        "relu2", "half", "learned", "scale", "sum"
    )  # fmt: skip


CONFIGS = [
    fc.FlashConfig(dim=16, qk_dim=8),
    fc.FlashConfig(dim=16, qk_dim=8, kind="gau", norm="layer", rel_bias="t5"),
    fc.TransformerConfig(dim=16, heads=2),
    fc.LMConfig(
        block=fc.FlashConfig(dim=16, qk_dim=8, causal=True), num_layers=3, tie_embeddings=False
    ),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_init_matches_spec_and_names_are_flat(cfg):
    spec = fc.param_spec(cfg)
    p = fc.init(cfg, seed=3)
    fc.check_params(p, cfg)
    for name in spec:
        assert re.fullmatch(r"(layers\.\d+\.)?[a-z_]+(\.[a-z_]+)*", name), name
    again = fc.init(cfg, seed=3)
    assert all(np.array_equal(p[k], again[k]) for k in p)
    other = fc.init(cfg, seed=4)
    assert any(
        not np.array_equal(p[k], other[k])
        for k in p
        if spec[k].std is not None  # drawn, not a constant
    )


def test_init_follows_the_paper():
    cfg = fc.FlashConfig(dim=64, qk_dim=128)
    p = fc.init(cfg, seed=0, dtype=np.float64)
    assert p["qk.gamma"].shape == (4, 128) and abs(p["qk.gamma"].std() - 0.02) < 0.003
    assert np.all(p["qk.beta"] == 0)
    assert p["hidden.kernel"].shape == (64, 2 * 128 + 128)


@pytest.mark.parametrize(
    "cfg",
    [
        fc.FlashConfig(dim=16, qk_dim=8, chunk_size=16),
        fc.FlashConfig(dim=16, qk_dim=8, kind="gau", max_len=100, rel_bias="t5"),
    ],
    ids=["flash-learned", "gau-t5"],
)
def test_the_starts_differ_only_in_the_relative_bias(cfg):
    """init="uniform" (default): every bias weight n^-1/2 (n = the bias span, C or max_len);
    init="paper": 0; every other weight the same draw."""
    assert cfg.init == "uniform"
    live, paper = fc.init(cfg, seed=1), fc.init(cfg.replace(init="paper"), seed=1)
    assert np.all(paper["rel_bias.weight"] == 0)
    np.testing.assert_array_equal(
        live["rel_bias.weight"], np.full_like(live["rel_bias.weight"], cfg.bias_span**-0.5)
    )
    assert all(np.array_equal(live[k], paper[k]) for k in live if k != "rel_bias.weight")
    with pytest.raises(ValueError, match="FlashConfig.init must be one of"):
        cfg.replace(init="zero")


def test_the_uniform_start_puts_the_bias_term_of_the_scores_at_span_to_the_minus_half():
    """Whatever bias_scale and bias_before_scale say, the bias term of relu^2's scores starts
    at L^-1/2 (before the 1/n scaling: L^-1/2 * L, with n = L); other attention functions: 0."""
    base = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=16)
    for kw, term in [
        (dict(bias_scale=4.0), lambda w: 4.0 * w),
        (dict(bias_before_scale=True), lambda w: w / 16),
        (dict(bias_scale=-2.0, bias_before_scale=True), lambda w: -2.0 * w / 16),
    ]:
        w = fc.init(base.replace(**kw))["rel_bias.weight"].astype(np.float64)
        np.testing.assert_allclose(term(w), 16**-0.5, rtol=elementwise_tolerance("float32", 2))
    assert np.all(fc.init(base.replace(attention="softmax_plus"))["rel_bias.weight"] == 0)


def test_a_config_dict_older_than_init_reads_as_the_paper_start():
    """Run folders, weight files and goldens written before FlashConfig.init were drawn from the
    paper's start; their config dicts have no 'init' and read as init="paper"."""
    cfg = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8))
    old = cfg.to_dict()
    del old["block"]["init"]
    assert fc.config_from_dict(old).block.init == "paper"
    assert fc.config_from_dict(cfg.to_dict()) == cfg


def test_check_params_lists_problems():
    cfg = fc.FlashConfig(dim=16, qk_dim=8)
    p = fc.init(cfg)
    bad = dict(p)
    bad.pop("out.bias")
    bad["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['out.bias'\], unexpected \['extra'\]"):
        fc.check_params(bad, cfg)
    bad = dict(p)
    bad["out.kernel"] = bad["out.kernel"].T
    with pytest.raises(ValueError, match="out.kernel: expected"):
        fc.check_params(bad, cfg)


def test_docs_weight_table_is_current():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "weights.md").read_text()
    assert weight_table_markdown() in doc, "regenerate with: flashcore weights-table"


def test_every_attention_choice_is_one_registry_entry():
    """FlashConfig.attention's choices are exactly flashcore.ops.ATTENTIONS (each entry holds
    its weights and its scale rule), and a name outside it is refused with the choices."""
    from typing import get_args

    from flashcore import ops
    from flashcore.config import Attention

    assert set(ops.ATTENTIONS) == set(get_args(Attention))
    with pytest.raises(ValueError, match="relu2"):
        fc.FlashConfig(dim=8, attention="relu3")


@pytest.mark.parametrize(
    "registry,choices,field",
    [("ROPES", "Rope", "rope"), ("REL_BIASES", "RelBias", "rel_bias")],
)
def test_every_position_choice_is_one_registry_entry(registry, choices, field):
    """FlashConfig.rope's and .rel_bias's choices are exactly flashcore.ops.ROPES and
    REL_BIASES; a name outside them is refused."""
    from typing import get_args

    from flashcore import config as config_module
    from flashcore import ops

    assert set(getattr(ops, registry)) == set(get_args(getattr(config_module, choices)))
    with pytest.raises(ValueError, match=field):
        fc.FlashConfig(dim=8, **{field: "spiral"})
