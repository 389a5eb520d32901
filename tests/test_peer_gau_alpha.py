"""GAU-alpha checkpoints import into flashcore and compute what the gau-alpha 0.0.3 package's layer
code computes (tests/_gau_alpha.py): the last hidden states and the MLM logits, with an attention
mask, in the spec and in the torch, JAX and TF backends, float64 and float32 to the conformance
table; bert4keras TF1 checkpoints of the same weights import to the same canonical weights; bad
state dicts are errors naming every tensor."""

from __future__ import annotations

import _gau_alpha as ga  # skips the module without torch
import numpy as np
import pytest

import flashcore as fc  # noqa: E402
from flashcore.app.convert import read_weights  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.io import WeightFileError  # noqa: E402
from flashcore.peers import gau_alpha  # noqa: E402

torch = ga.torch
WHERE = ["spec", "torch", "jax", "tf"]


def _run(where: str, cfg, params, tokens, types, mask, dtype: str):
    """(hidden (b, t, d), logits (b, t, v)) of flashcore ``where`` in ``dtype``, float64 NumPy."""
    p = {k: v.astype(dtype) for k, v in params.items()}
    if where == "spec":
        kw = dict(config=cfg, mask=mask, token_type_ids=types)
        h = fc.lm_hidden(p, tokens, **kw)
        return h, fc.lm_logits(p, tokens, **kw)
    if where == "torch":
        import flashcore.torch as ft

        lm = ft.LM(cfg, init=False, dtype=getattr(torch, dtype))
        lm.load_canonical(p)
        lm.eval()
        t = {
            k: torch.as_tensor(v) for k, v in (("tokens", tokens), ("types", types), ("mask", mask))
        }
        with torch.no_grad():
            h = lm.hidden_states(t["tokens"], mask=t["mask"], token_type_ids=t["types"])
            logits = lm(t["tokens"], mask=t["mask"], token_type_ids=t["types"])
        return h.double().numpy(), logits.double().numpy()
    if where == "jax":
        pytest.importorskip("jax", reason="the jax backend is not installed")
        from _jax64 import x64

        import flashcore.jax as fj

        with x64(dtype == "float64"):
            lm = fj.LM(cfg, params=p)
            h = lm.hidden_states(tokens, mask=mask, token_type_ids=types)
            logits = lm(tokens, mask=mask, token_type_ids=types)
            return np.asarray(h, np.float64), np.asarray(logits, np.float64)
    pytest.importorskip("tensorflow", reason="the tf backend is not installed")
    import flashcore.tf as ftf

    lm = ftf.LM(cfg, params=p, dtype=dtype)
    h = lm.hidden_states(tokens, mask=mask, token_type_ids=types)
    logits = lm(tokens, mask=mask, token_type_ids=types)
    return np.asarray(h, np.float64), np.asarray(logits, np.float64)


def _check(where, port, dtype, pad=4):
    tokens, types, mask = ga.inputs(pad=pad)
    ref_h, ref_logits = ga.port_outputs(port, tokens, types, mask)
    params, cfg = gau_alpha.import_state_dict(port.state_dict())
    got_h, got_logits = _run(where, cfg, params, tokens, types, mask, dtype)
    for name, got, ref in (("hidden", got_h, ref_h), ("logits", got_logits, ref_logits)):
        assert_close(got[mask], ref[mask], dtype=dtype, err_msg=f"{where} {dtype} {name}")
    return cfg


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parity_masked(where, dtype):
    torch_dtype = getattr(torch, dtype)
    cfg = _check(where, ga.make_port(0, torch_dtype), dtype)
    block = cfg.block
    assert (block.norm_position, block.norm_affine, block.use_bias) == ("post", False, False)
    assert (cfg.tie_embeddings, cfg.final_norm, cfg.embed_norm, cfg.type_vocab_size) == (
        True,
        "none",
        "rms",
        2,
    )


@pytest.mark.parametrize("where", WHERE)
def test_parity_biases_untied_head_no_padding(where):
    """use_bias=True (the port's option: dense biases and scale-offset offsets) and a decoder
    that is not the embedding (head.kernel), every position real."""
    port = ga.make_port(1, torch.float64, use_bias=True, tied=False)
    cfg = _check(where, port, "float64", pad=0)
    assert cfg.block.use_bias and not cfg.tie_embeddings


def test_rope_halves_equal_interleaved_pairs():
    """The port writes each rotated pair back as [firsts | seconds]; flashcore's 'interleaved'
    writes it back in place. Q K^T (all the rotated heads meet in) is the same."""
    layer = ga.port_layer()
    rng = np.random.default_rng(0)
    t, s = 7, 8
    q, k = (torch.as_tensor(rng.normal(size=(1, t, s))) for _ in range(2))
    sin, cos = ga.make_port(0, s=s).sinusoid(t, torch.float64)
    rot = layer.GatedAttentionUnit.apply_rotary
    port = torch.einsum("bmd,bnd->bmn", rot(q, (sin, cos)), rot(k, (sin, cos))).numpy()
    pos = np.arange(t)
    ours = [
        fc.ops.rope(a.numpy(), pos, dims=s, mode="interleaved", base=10000.0, xp=np) for a in (q, k)
    ]
    assert_close(ours[0] @ ours[1].transpose(0, 2, 1), port, dtype="float64")
    halves = fc.ops.rope(q.numpy(), pos, dims=s, mode="half", base=10000.0, xp=np)
    assert not np.allclose(halves, rot(q, (sin, cos)).numpy())  # 'half' pairs other channels


def test_bert4keras_checkpoint_imports_the_same_weights(tmp_path):
    pytest.importorskip("tensorflow", reason="bert4keras checkpoints are TF1 checkpoints")
    port = ga.make_port(2, torch.float32)
    prefix = ga.write_bert4keras(tmp_path / "bert_model.ckpt", port)
    want, want_cfg = gau_alpha.import_state_dict(port.state_dict())
    for source in (prefix, tmp_path):  # the prefix, or the folder holding it
        got, cfg = read_weights(source, "gau-alpha")
        assert cfg == want_cfg and sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_bert4keras_unknown_variables_are_listed(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="bert4keras checkpoints are TF1 checkpoints")
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable(np.zeros(3, np.float32), name="bert/pooler/dense/kernel")
        saver = tf.compat.v1.train.Saver([v])
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "x.ckpt"), write_meta_graph=False)
    with pytest.raises(WeightFileError, match="bert/pooler/dense/kernel"):
        read_weights(tmp_path / "x.ckpt", "gau-alpha")
    with pytest.raises(WeightFileError, match="not a readable TF checkpoint"):
        (tmp_path / "y.ckpt.index").write_bytes(b"not a checkpoint")
        read_weights(tmp_path / "y.ckpt", "gau-alpha")


def test_bad_state_dicts_list_every_name():
    sd = dict(ga.make_port(3, torch.float32).state_dict())
    bad = dict(sd)
    del bad["gau_alpha.encoder.layer.1.gau.o_dense.weight"]
    bad["gau_alpha.pooler.weight"] = torch.zeros(2)
    bad["gau_alpha.encoder.layer.0.gau.k_scaleoffset.weight"] = torch.zeros(5)
    with pytest.raises(gau_alpha.GAUAlphaImportError) as err:
        gau_alpha.import_state_dict(bad)
    msg = str(err.value)
    for name in ("layer.1.gau.o_dense.weight", "gau_alpha.pooler.weight", "k_scaleoffset.weight"):
        assert name in msg
    with pytest.raises(gau_alpha.GAUAlphaImportError, match="cannot find"):
        gau_alpha.import_state_dict({"x": torch.zeros(1)})
    config = ga.hf_config(ga.make_port(3))
    for key, value, words in (
        ("normalization", "squared_relu", "normalization"),
        ("hidden_act", "gelu", "hidden_act"),
        ("attention_scale", False, "attention_scale"),
    ):
        with pytest.raises(gau_alpha.GAUAlphaImportError, match=words):
            gau_alpha.import_state_dict(sd, {**config, key: value})
    with pytest.raises(gau_alpha.GAUAlphaImportError, match="misshapen"):  # config vs tensors
        gau_alpha.import_state_dict(sd, {**config, "attention_key_size": 8})


def test_config_json_and_folder_formats(tmp_path):
    port = ga.make_port(4, torch.float32)
    want, want_cfg = gau_alpha.import_state_dict(port.state_dict(), ga.hf_config(port))
    for weights in ("pytorch_model.bin", "model.safetensors"):
        folder = ga.write_folder(tmp_path / weights, port, weights)
        for source in (folder, folder / weights):
            got, cfg = read_weights(source, "gau-alpha")
            assert cfg == want_cfg
            assert all(np.array_equal(got[k], want[k]) for k in want)
        assert gau_alpha.read_vocab(folder)[:5] == ga.SPECIAL
    with pytest.raises(FileNotFoundError, match="no GAU-alpha checkpoint"):
        read_weights(tmp_path / "nothing", "gau-alpha")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(WeightFileError, match="model.safetensors"):
        read_weights(tmp_path / "bad", "gau-alpha")
