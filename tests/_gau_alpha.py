"""A GAU-alpha masked LM built from the ``gau-alpha`` 0.0.3 package's own layer code, for the
parity tests, and a synthetic downloaded folder of the Hub repo's layout.

The package's ``__init__`` imports ``modeling_gau_alpha``, which needs ``SequenceSummary`` from
transformers < 5; the layer code (``gau_alpha/layer.py``: ``GAULayer``, ``Norm``) does not. So
``gau_alpha/layer.py`` is loaded by file path from the installed package (``[test]`` extra), and
:class:`PortMLM` assembles ``GAUAlphaForMaskedLM``'s structure around it: the same module names
(so the same state-dict keys), ``Norm(word + token type)`` embeddings, the encoder's float32
sinusoid table (``get_sinusoidal_id``), a ``(b, 1, t)`` float key mask, and a bias-free decoder
tied to the word embedding. Dropout is off (rates 0, ``eval()``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GAU-alpha port is a torch model")
from torch import nn  # noqa: E402

VOCAB_CHARS = "今天气很好不错热冷我们去公园玩吧。，的是了"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def port_layer():
    """``gau_alpha/layer.py`` of the installed gau-alpha package, loaded by path (the package's
    ``__init__`` is not run); a skip when the package is not installed."""
    spec = importlib.util.find_spec("gau_alpha")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gau-alpha 0.0.3 is a test dependency (the [test] extra)")
    path = Path(spec.submodule_search_locations[0]) / "layer.py"
    mod_spec = importlib.util.spec_from_file_location("_gau_alpha_layer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


class _Embeddings(nn.Module):
    def __init__(self, layer, v, d, types, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(v, d, padding_idx=0)
        self.token_type_embeddings = nn.Embedding(types, d)
        self.norm = layer.Norm(eps=eps)

    def forward(self, input_ids, token_type_ids):
        return self.norm(
            self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        )


class _Encoder(nn.Module):
    def __init__(self, layer, d, e, s, n, use_bias, eps):
        super().__init__()
        self.layer = nn.ModuleList(
            layer.GAULayer(
                hidden_size=d, intermediate_size=e, attention_key_size=s, activation="swish",
                use_bias=use_bias, normalization="softmax_plus", attention_scale=True,
                attention_dropout=0.0, hidden_dropout=0.0, eps=eps,
            )
            for _ in range(n)
        )  # fmt: skip


class _Model(nn.Module):
    def __init__(self, layer, v, d, e, s, n, types, use_bias, eps):
        super().__init__()
        self.embeddings = _Embeddings(layer, v, d, types, eps)
        self.encoder = _Encoder(layer, d, e, s, n, use_bias, eps)


class _Predictions(nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.decoder = nn.Linear(d, v, bias=False)


class _Cls(nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.predictions = _Predictions(v, d)


class PortMLM(nn.Module):
    """GAUAlphaForMaskedLM from the package's layer code: ``gau_alpha.*`` and ``cls.*``."""

    def __init__(self, *, v=50, d=32, e=48, s=16, n=2, types=2, use_bias=False, eps=1e-12,
                 tied=True):  # fmt: skip
        super().__init__()
        self.s = s
        self.gau_alpha = _Model(port_layer(), v, d, e, s, n, types, use_bias, eps)
        self.cls = _Cls(v, d)
        if tied:  # what transformers' post_init does (tie_word_embeddings defaults to True)
            self.cls.predictions.decoder.weight = self.gau_alpha.embeddings.word_embeddings.weight

    def sinusoid(self, t: int, dtype):
        """The encoder's (sin, cos) tables, (1, t, s/2): float32 as ``get_sinusoidal_id`` makes
        them, or exact float64 for a float64 model (so that float64 compares the layers)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        pos = torch.arange(0, t, dtype=work)
        idx = torch.arange(0, self.s // 2, dtype=work)
        ang = torch.einsum(
            "n,d->nd", pos, torch.pow(torch.tensor(10000.0, dtype=work), -2 * idx / self.s)
        )
        return ang.sin()[None].to(dtype), ang.cos()[None].to(dtype)

    def forward(self, input_ids, attention_mask, token_type_ids):
        """-> (last hidden states (b, t, d), MLM logits (b, t, v)); attention_mask (b, t)."""
        dtype = self.gau_alpha.embeddings.word_embeddings.weight.dtype
        mask = attention_mask[:, None, :].to(dtype)  # (b, 1, t), as GAUAlphaModel
        h = self.gau_alpha.embeddings(input_ids, token_type_ids)
        sin_cos = self.sinusoid(input_ids.shape[1], dtype)
        for layer in self.gau_alpha.encoder.layer:
            h = layer(h, mask, sin_cos)[0]
        return h, self.cls.predictions.decoder(h)


def make_port(seed: int = 0, dtype=torch.float64, **kw) -> PortMLM:
    """A randomised PortMLM: N(0, 1) embeddings, scale-offsets 1 + N(0, 0.5^2), biases
    N(0, 0.3^2), the dense kernels at torch's default init; eval mode."""
    torch.manual_seed(seed)
    model = PortMLM(**kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embeddings" in name or "decoder" in name:
                p.normal_(0.0, 1.0)
            elif "scaleoffset.weight" in name:
                p.add_(0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def inputs(seed: int = 0, b: int = 2, t: int = 11, v: int = 50, pad: int = 4):
    """tokens (b, t) in [1, v), token types (b, t) in {0, 1}, mask (b, t) (row 0's last ``pad``
    positions padded)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, v, (b, t))
    types = rng.integers(0, 2, (b, t))
    mask = np.ones((b, t), bool)
    if pad:
        mask[0, t - pad :] = False
    return tokens, types, mask


def port_outputs(model: PortMLM, tokens, types, mask):
    """(hidden (b, t, d), logits (b, t, v)) of the port as float64 NumPy."""
    with torch.no_grad():
        h, logits = model(torch.as_tensor(tokens), torch.as_tensor(mask), torch.as_tensor(types))
    return h.double().numpy(), logits.double().numpy()


def hf_config(model: PortMLM) -> dict:
    """The config.json of ``model`` (GAUAlphaConfig's fields, as the Hub repo has them)."""
    emb = model.gau_alpha.embeddings
    layer0 = model.gau_alpha.encoder.layer[0].gau
    return {
        "architectures": ["GAUAlphaForMaskedLM"],
        "model_type": "gau_alpha",
        "attention_key_size": layer0.attention_key_size,
        "attention_probs_dropout_prob": 0.1,
        "attention_scale": True,
        "hidden_act": "swish",
        "hidden_dropout_prob": 0.1,
        "hidden_size": emb.word_embeddings.weight.shape[1],
        "intermediate_size": layer0.intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "normalization": "softmax_plus",
        "num_hidden_layers": len(model.gau_alpha.encoder.layer),
        "pad_token_id": 0,
        "type_vocab_size": emb.token_type_embeddings.weight.shape[0],
        "use_bias": layer0.use_bias,
        "vocab_size": emb.word_embeddings.weight.shape[0],
    }


def write_folder(folder: Path, model: PortMLM, weights: str = "pytorch_model.bin") -> Path:
    """A downloaded-folder twin: config.json, ``weights`` (pytorch_model.bin: ``torch.save`` of
    the state dict; model.safetensors: as ``save_pretrained`` writes it, the tied decoder
    dropped) and vocab.txt (the special tokens, then :data:`VOCAB_CHARS`, padded to the size)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(model)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    sd = model.state_dict()
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        word = "gau_alpha.embeddings.word_embeddings.weight"
        decoder = "cls.predictions.decoder.weight"
        if sd[decoder].data_ptr() == sd[word].data_ptr():
            sd = {k: v for k, v in sd.items() if k != decoder}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / weights))
    else:
        torch.save(sd, folder / weights)
    vocab = SPECIAL + list(VOCAB_CHARS)
    vocab += [f"[unused{i}]" for i in range(config["vocab_size"] - len(vocab))]
    assert len(vocab) == config["vocab_size"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder


def write_bert4keras(prefix: Path, model: PortMLM) -> Path:
    """The same weights as a bert4keras TF1 checkpoint (``prefix``.index / .data-*), under the
    variable names of bert4keras' ``GAU_alpha.variable_mapping`` (Keras kernels [in, out])."""
    import tensorflow as tf

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tfvars = {
        "bert/embeddings/word_embeddings": sd["gau_alpha.embeddings.word_embeddings.weight"],
        "bert/embeddings/token_type_embeddings": sd[
            "gau_alpha.embeddings.token_type_embeddings.weight"
        ],
    }
    for i in range(len(model.gau_alpha.encoder.layer)):
        g, tfg = f"gau_alpha.encoder.layer.{i}.gau.", f"GAU_alpha/encoder/layer_{i}/gau/"
        tfvars[tfg + "i_dense/kernel"] = sd[g + "i_dense.weight"].T
        tfvars[tfg + "o_dense/kernel"] = sd[g + "o_dense.weight"].T
        tfvars[tfg + "q_scaleoffset/gamma"] = sd[g + "q_scaleoffset.weight"]
        tfvars[tfg + "k_scaleoffset/gamma"] = sd[g + "k_scaleoffset.weight"]
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(v, name=k) for k, v in tfvars.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False)
    return prefix
