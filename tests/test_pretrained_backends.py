"""One Hugging Face directory (save_pretrained of flashcore.torch.hf) loads in every backend:
``flashcore.{torch,jax,tf}.LM.from_pretrained(dir)`` gives the same weights (bytes) and the same
logits (float32 tolerance), without transformers in jax and tf."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the directory is written by flashcore.torch.hf")
pytest.importorskip("transformers", reason="save_pretrained needs the [hf] extra")

import flashcore as fc  # noqa: E402
from flashcore import pretrained  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.io import WeightFileError, save  # noqa: E402
from flashcore.torch import LM as TorchLM  # noqa: E402
from flashcore.torch.hf import FlashcoreForCausalLM  # noqa: E402

CONFIGS = {
    "flash": fc.LMConfig(
        block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True),
        vocab_size=64,
        num_layers=2,
    ),
    "transformer-untied": fc.LMConfig(
        block=fc.TransformerConfig(dim=16, heads=2),
        vocab_size=64,
        num_layers=1,
        tie_embeddings=False,
        head_bias=True,
    ),
}
BACKENDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}


def _weights(config: fc.LMConfig) -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {
        k: (v + r.normal(0, 0.2, v.shape)).astype(np.float32) for k, v in fc.init(config, 0).items()
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """name -> (directory, tokens (2, 9), the HF model's logits (2, 9, v))."""
    out = {}
    tokens = np.random.default_rng(1).integers(0, 64, (2, 9))
    for name, config in CONFIGS.items():
        lm = TorchLM(config, init=False)
        lm.load_canonical(_weights(config))
        model = FlashcoreForCausalLM.from_flashcore(lm).eval()
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens)).logits.numpy()
        out[name] = (folder, tokens, logits)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_same_directory_loads_in_every_backend(folders, backend, name):
    pytest.importorskip(BACKENDS[backend], reason=f"the {backend} backend is not installed")
    module = importlib.import_module(f"flashcore.{backend}")
    folder, tokens, want = folders[name]
    lm = module.LM.from_pretrained(folder)
    assert lm.config == CONFIGS[name]
    for k, v in lm.to_canonical().items():  # bytes copied: exact
        np.testing.assert_array_equal(np.asarray(v), _weights(CONFIGS[name])[k], err_msg=k)
    got = lm(torch.from_numpy(tokens)) if backend == "torch" else lm(tokens)
    got = got.detach().numpy() if backend == "torch" else np.asarray(got)
    rtol, atol = tolerance("float32", "output")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max())


def test_a_folder_without_weights_or_with_a_foreign_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        pretrained.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightFileError, match="model.safetensors"):
        pretrained.load(tmp_path)
    save(tmp_path / "model.safetensors", _weights(CONFIGS["flash"]), CONFIGS["flash"])
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(WeightFileError, match="model_type is 'gpt2'"):
        pretrained.load(tmp_path)
    (tmp_path / "config.json").unlink()  # the weights carry the config: enough on their own
    params, config = pretrained.load(tmp_path)
    assert config == CONFIGS["flash"] and set(params) == set(fc.param_spec(config))
