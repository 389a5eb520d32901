"""Hugging Face integration (flashcore.torch.hf): config.json round trip, save_pretrained ->
AutoModelForCausalLM.from_pretrained, logits and loss against the spec, greedy generate against
flashcore's own decoding, the Trainer, and ``flashcore export`` of a real training run."""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF integration is torch's")
pytest.importorskip("transformers", reason="the HF integration needs the [hf] extra")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore import io  # noqa: E402
from flashcore.app import cli, train  # noqa: E402
from flashcore.app import export as export_mod  # noqa: E402
from flashcore.conformance.assertions import assert_greedy_tokens  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction, tolerance  # noqa: E402
from flashcore.torch import LM  # noqa: E402
from flashcore.torch.hf import (  # noqa: E402
    FlashcoreConfig,
    FlashcoreDecodeState,
    FlashcoreForCausalLM,
)

FLASH = fc.LMConfig(
    block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, max_len=32),
    vocab_size=64,
    num_layers=2,
)
GAU = fc.LMConfig(
    block=fc.FlashConfig(dim=16, kind="gau", qk_dim=8, causal=True, max_len=32, rel_bias="t5"),
    vocab_size=64,
    num_layers=1,
)
TRANSFORMER = fc.LMConfig(
    block=fc.TransformerConfig(dim=16, heads=2), vocab_size=64, num_layers=1, tie_embeddings=False
)
UNTIED = fc.LMConfig(
    block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, token_shift=True),
    vocab_size=64,
    num_layers=1,
    tie_embeddings=False,
    head_bias=True,
    abs_pos="scaled_sinusoidal",
    final_norm="rms",
)
CONFIGS = {"flash": FLASH, "gau": GAU, "transformer": TRANSFORMER, "untied": UNTIED}


def _noisy(config: fc.LMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights plus noise, so that every parameter matters (float32)."""
    r = np.random.default_rng(seed)
    return {
        k: (v + r.normal(0, 0.2, v.shape)).astype(np.float32)
        for k, v in fc.init(config, seed).items()
    }


def _hf_model(config: fc.LMConfig, seed: int = 0) -> FlashcoreForCausalLM:
    lm = LM(config, init=False)
    lm.load_canonical(_noisy(config, seed))
    return FlashcoreForCausalLM.from_flashcore(lm).eval()


def _assert_close(got: np.ndarray, want: np.ndarray, quantity: str = "output") -> None:
    rtol, atol = tolerance("float32", quantity)
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def _tokens(config: fc.LMConfig, b: int, t: int, seed: int = 1) -> torch.Tensor:
    r = np.random.default_rng(seed)
    return torch.from_numpy(r.integers(0, config.vocab_size, (b, t)))


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trips_through_config_json(tmp_path, name):
    config = CONFIGS[name]
    FlashcoreConfig.from_lm_config(config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "flashcore" and data["flashcore"] == config.to_dict()
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, FlashcoreConfig)
    assert loaded.lm_config == config
    assert (loaded.vocab_size, loaded.hidden_size) == (config.vocab_size, config.dim)
    assert FlashcoreConfig(flashcore=config).lm_config == config


def test_config_refuses_fields_that_contradict_the_lm_config():
    with pytest.raises(ValueError, match="vocab_size=100 disagrees"):
        FlashcoreConfig(flashcore=FLASH.to_dict(), vocab_size=100)
    with pytest.raises(ValueError, match="LMConfig"):
        FlashcoreConfig(flashcore=FLASH.block.to_dict())


# -- save_pretrained / from_pretrained -----------------------------------------------------------


def test_save_pretrained_writes_the_canonical_file(tmp_path):
    model = _hf_model(FLASH)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert names == set(fc.param_spec(FLASH))  # canonical names, not the torch module's
    params, config = io.load(tmp_path / "model.safetensors")  # the file flashcore.io reads
    assert config == FLASH
    want = _noisy(FLASH)
    for k, v in want.items():  # bytes copied: exact; kernels [in, out]
        np.testing.assert_array_equal(params[k], v, err_msg=k)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_auto_model_from_pretrained_gives_flashcore_logits(tmp_path, name):
    config = CONFIGS[name]
    _hf_model(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(model, FlashcoreForCausalLM) and not model.training
    for k, v in model.model.to_canonical().items():
        np.testing.assert_array_equal(v, _noisy(config)[k], err_msg=k)
    tokens = _tokens(config, 2, 9)
    with torch.no_grad():
        out = model(tokens)
    want = fc.lm_logits(_noisy(config), tokens.numpy(), config=config)  # the spec on NumPy
    assert out.logits.shape == (2, 9, config.vocab_size) and out.loss is None
    _assert_close(out.logits.numpy(), np.asarray(want))


def test_loss_follows_the_transformers_shift_and_ignores_minus_100():
    model = _hf_model(FLASH)
    tokens = _tokens(FLASH, 2, 10)
    labels = tokens.clone()
    labels[0, 3:6] = -100
    with torch.no_grad():
        out = model(tokens, labels=labels)
    logits = fc.lm_logits(_noisy(FLASH), tokens.numpy(), config=FLASH)
    targets = labels.numpy()[:, 1:]
    keep = targets != -100
    want = fc.cross_entropy(logits[:, :-1], np.where(keep, targets, 0), keep)
    _assert_close(out.loss.numpy(), np.asarray(want), "loss")
    assert keep.sum() == 2 * 9 - 3


def test_generation_config_is_saved_and_loaded(tmp_path):
    model = _hf_model(FLASH)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.generation_config.max_new_tokens == 7
    assert loaded.generate(_tokens(FLASH, 1, 3), do_sample=False).shape == (1, 10)


def test_dtype_and_bfloat16_files(tmp_path):
    lm = LM(FLASH, seed=0, dtype=torch.bfloat16)
    FlashcoreForCausalLM.from_flashcore(lm).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("embed.weight").dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.model.embed.weight, lm.embed.weight)
    assert (
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32
    )


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder at"):
        FlashcoreForCausalLM.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(OSError, match="missing"):  # transformers' own message, from AutoConfig
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "missing"))
    _hf_model(FLASH).save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    data["flashcore"] = GAU.to_dict()
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    with pytest.raises(io.WeightFileError, match="config.json describes"):
        FlashcoreForCausalLM.from_pretrained(tmp_path / "m")
    with pytest.raises(io.WeightFileError, match="config.json describes"):
        LM.from_pretrained(tmp_path / "m")


def test_loads_offline_from_a_local_folder_and_offline_hub_ids_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hf_model(FLASH).save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert model.model.config == FLASH
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub could not provide it"):
        FlashcoreForCausalLM.from_pretrained(
            "nobody/no-such-flashcore-model", cache_dir=tmp_path / "cache", local_files_only=True
        )


def test_hub_ids_resolve_through_the_huggingface_hub_cache(tmp_path, monkeypatch):
    """No network here: a Hub id is served from huggingface_hub's cache (its documented layout:
    models--OWNER--NAME/refs/main -> snapshots/REVISION/files), as after an online download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-flash"
    _hf_model(FLASH).save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    hub = dict(cache_dir=tmp_path / "cache", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained("someone/tiny-flash", **hub)
    assert isinstance(model, FlashcoreForCausalLM) and model.model.config == FLASH
    lm = LM.from_pretrained("someone/tiny-flash", **hub)
    for k, v in lm.to_canonical().items():
        np.testing.assert_array_equal(v, _noisy(FLASH)[k], err_msg=k)


def test_load_state_dict_takes_canonical_weights(tmp_path):
    """What the Trainer does when it resumes: load_state_dict(load_file(model.safetensors))."""
    _hf_model(FLASH, seed=0).save_pretrained(tmp_path)
    other = _hf_model(FLASH, seed=5)
    other.load_state_dict(load_file(str(tmp_path / "model.safetensors")), False)
    for k, v in other.model.to_canonical().items():
        np.testing.assert_array_equal(v, _noisy(FLASH, 0)[k], err_msg=k)
    native = other.state_dict()  # and its own names still work
    assert set(native) == {f"model.{n}" for n, _ in other.model.naming.values()}
    _hf_model(FLASH, seed=6).load_state_dict(native)


# -- generate --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flash", "gau", "transformer"])
def test_greedy_generate_equals_flashcore_decoding(tmp_path, name):
    config = CONFIGS[name]
    _hf_model(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = _tokens(config, 2, 6)
    got = model.generate(prompt, max_new_tokens=10, do_sample=False)
    want = model.model.generate(prompt, 10, temperature=0)  # flashcore's own loop
    assert model.incremental  # FLASH's state; a key/value cache for one-layer GAU, Transformer++
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    assert isinstance(out.cache, FlashcoreDecodeState)
    assert got.shape == (2, 16)
    assert torch.equal(got, want), (got, want)


def test_generate_keeps_the_constant_size_flash_state(monkeypatch):
    model = _hf_model(FLASH)
    steps, forwards = [], []
    step, forward = model.model.decode_step, model.model.forward
    monkeypatch.setattr(model.model, "decode_step", lambda *a: steps.append(1) or step(*a))
    monkeypatch.setattr(
        model.model, "forward", lambda *a, **k: forwards.append(1) or forward(*a, **k)
    )
    prompt = _tokens(FLASH, 1, 5)
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
    assert out.sequences.shape == (1, 17)
    assert len(steps) == 5 + 12 - 1 and not forwards  # one decode step per token, no forward
    state = out.cache
    assert isinstance(state, FlashcoreDecodeState) and state.get_seq_length() == 16
    fresh = model.model.decode_init(1)
    for layer, values in state.state.items():  # the same sizes as an empty state
        assert {k: v.shape for k, v in values.items()} == {
            k: v.shape for k, v in fresh[layer].items()
        }


@pytest.mark.parametrize("name", ["gau", "transformer"])
def test_generate_uses_the_key_value_cache_and_equals_the_recompute_path(monkeypatch, name):
    """GAU (one layer) and Transformer++ LMs decode with their key/value caches in generate():
    one decode step per token and no full forward, the greedy tokens of rerunning the forward
    every step (use_cache=False), a cache sized for the prompt plus the new tokens."""
    config = CONFIGS[name]
    model = _hf_model(config)
    prompt = _tokens(config, 2, 5)
    steps, forwards = [], []
    step, forward = model.model.decode_step, model.model.forward
    monkeypatch.setattr(model.model, "decode_step", lambda *a: steps.append(1) or step(*a))
    monkeypatch.setattr(
        model.model, "forward", lambda *a, **k: forwards.append(1) or forward(*a, **k)
    )
    out = model.generate(prompt, max_new_tokens=9, do_sample=False, return_dict_in_generate=True)
    assert len(steps) == 5 + 9 - 1 and not forwards
    monkeypatch.undo()
    got = out.sequences
    with torch.no_grad():  # the full forward over each prefix: what use_cache=False computes
        logits = torch.stack([model.model(got[:, :t])[:, -1] for t in range(5, 14)], dim=1)
    # each new token is that forward's argmax, up to a near tie (the cache sums in another order)
    assert_greedy_tokens(got[:, 5:], logits, reorder=longest_reduction(config, 14))
    k = out.cache.state["layers.0"]["k"]  # GAU (b, capacity, s); Transformer++ (b, h, capacity, hd)
    assert k.shape[-2] == 5 + 9


def test_decoding_with_the_cache_gives_the_forward_logits():
    model = _hf_model(FLASH)
    tokens = _tokens(FLASH, 2, 11)
    with torch.no_grad():
        full = model(tokens).logits
        first = model(tokens[:, :7], use_cache=True)
        rest = model(tokens[:, 7:], cache=first.cache)
    assert first.cache.get_seq_length() == 11
    got = torch.cat([first.logits, rest.logits], dim=1)
    _assert_close(got.numpy(), full.numpy())
    with pytest.raises(ValueError, match="takes no padding"):
        model(tokens, attention_mask=torch.ones_like(tokens).index_fill(1, torch.tensor([0]), 0),
              use_cache=True)  # fmt: skip


# -- Trainer ---------------------------------------------------------------------------------


class _Bytes(torch.utils.data.Dataset):
    def __init__(self, text: bytes, context: int):
        data = torch.tensor(list(text), dtype=torch.long)
        self.rows = data[: len(data) // context * context].view(-1, context)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _trainer(model, out: Path, text: bytes):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=_Bytes(text, 32))


def test_trainer_trains_saves_and_resumes(tmp_path):
    config = FLASH.replace(vocab_size=256)
    text = Path(sysconfig.get_paths()["stdlib"], "this.py").read_bytes()[:1024]
    model = FlashcoreForCausalLM(FlashcoreConfig.from_lm_config(config), seed=0)
    before = model.model.to_canonical()
    trainer = _trainer(model, tmp_path / "out", text)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    after = model.model.to_canonical()
    assert any(not np.array_equal(before[k], after[k]) for k in before)

    # its checkpoints are pretrained folders (canonical model.safetensors) ...
    ckpt = tmp_path / "out" / "checkpoint-6"
    for k, v in LM.from_pretrained(ckpt).to_canonical().items():
        np.testing.assert_array_equal(v, after[k], err_msg=k)
    # ... and the Trainer resumes from them (load_state_dict of canonical names)
    again = FlashcoreForCausalLM(FlashcoreConfig.from_lm_config(config), seed=1)
    resumed = _trainer(again, tmp_path / "out", text)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    rtol, atol = tolerance("float32", "grad_params")
    for k, v in again.model.to_canonical().items():
        np.testing.assert_allclose(v, after[k], rtol=rtol, atol=atol * np.abs(after[k]).max())


# -- flashcore export ------------------------------------------------------------------------

TINY = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "48",
        "--batch", "2", "--eval-tokens", "192", "--log-every", "1", "--quiet", "--warmup", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real 2-step `flashcore train` run on a few stdlib files."""
    folder = tmp_path_factory.mktemp("corpus")
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "copy.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    out = tmp_path_factory.mktemp("runs") / "run"
    assert train.train_main([*TINY, "--data", str(folder), "--steps", "2", "--out", str(out)]) == 0
    return out


def test_export_of_a_training_run(tmp_path, run, capsys):
    dst = tmp_path / "hf"
    assert cli.main(["export", str(run), str(dst)]) == 0
    assert (dst / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(dst, local_files_only=True)
    _, config = io.load(run / "model.safetensors")
    assert model.config.lm_config == config
    capsys.readouterr()
    prompt = "def "
    assert train.generate_main([str(run), "--prompt", prompt, "--max-new", "16",
                                "--temperature", "0"]) == 0  # fmt: skip
    cli_text = capsys.readouterr().out
    ids = torch.tensor([list(prompt.encode())])
    got = model.generate(ids, max_new_tokens=16, do_sample=False)
    hf_text = bytes(got[0].tolist()).decode("utf-8", errors="replace") + "\n"
    assert hf_text == cli_text


def test_exported_folder_has_a_tokenizer_and_runs_in_the_text_generation_pipeline(
    tmp_path, run, capsys
):
    """AutoTokenizer reads the exported byte tokenizer (id = byte), and the text-generation
    pipeline's greedy output equals ``flashcore generate --temperature 0``."""
    from transformers import AutoTokenizer, pipeline

    dst = tmp_path / "hf"
    assert cli.main(["export", str(run), str(dst)]) == 0
    tok = AutoTokenizer.from_pretrained(dst, local_files_only=True)
    text = "déf f(x):\n\treturn x"
    assert tok(text)["input_ids"] == list(text.encode())
    assert tok.decode(list(text.encode())) == text
    capsys.readouterr()
    prompt = "def "
    assert train.generate_main([str(run), "--prompt", prompt, "--max-new", "12",
                                "--temperature", "0", "--json"]) == 0  # fmt: skip
    want = json.loads(capsys.readouterr().out)
    gen = pipeline("text-generation", model=str(dst))
    out = gen(prompt, max_new_tokens=12, do_sample=False, return_tensors=True)
    ids = out[0]["generated_token_ids"]
    assert list(ids) == list(prompt.encode()) + list(want["new_tokens"])


def test_a_run_with_its_own_tokenizer_exports_it(tmp_path, capsys):
    """A run on a `flashcore tokenize` corpus exports its tokenizer.json: AutoTokenizer encodes
    as the run's tokenizer does, and the pipeline's greedy text is `flashcore generate`'s."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, pipeline

    folder = tmp_path / "text"
    folder.mkdir()
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "copy.py", "this.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    data = tmp_path / "tok"
    assert cli.main(["tokenize", str(folder), "--vocab-size", "300", "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert train.train_main([*TINY, "--data", str(data), "--steps", "2", "--out", str(run)]) == 0
    dst = tmp_path / "hf"
    assert cli.main(["export", str(run), str(dst)]) == 0
    own = Tokenizer.from_file(str(run / "tokenizer.json"))
    text = "def copy(x):\n    return x"
    assert AutoTokenizer.from_pretrained(dst)(text)["input_ids"] == own.encode(text).ids
    capsys.readouterr()
    assert train.generate_main([str(run), "--prompt", "def ", "--max-new", "8",
                                "--temperature", "0", "--json"]) == 0  # fmt: skip
    want = json.loads(capsys.readouterr().out)
    out = pipeline("text-generation", model=str(dst))("def ", max_new_tokens=8, do_sample=False,
                                                       return_tensors=True)  # fmt: skip
    assert list(out[0]["generated_token_ids"]) == own.encode("def ").ids + want["new_tokens"]


def test_a_masked_lm_exports_to_auto_model_for_masked_lm_and_fills_masks(tmp_path):
    """A `flashcore train --objective mlm` run exports with the masked-LM head and the byte
    tokenizer plus [MASK] (id 256): the fill-mask pipeline's scores are flashcore's own."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from flashcore.torch.hf import FlashcoreForMaskedLM

    folder = tmp_path / "corpus"
    folder.mkdir()
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    run = tmp_path / "mlm"
    argv = [*TINY, "--objective", "mlm", "--data", str(folder), "--steps", "2", "--out", str(run)]
    assert train.train_main(argv) == 0
    dst = tmp_path / "hf"
    assert cli.main(["export", str(run), str(dst)]) == 0
    model = AutoModelForMaskedLM.from_pretrained(dst, local_files_only=True)
    assert isinstance(model, FlashcoreForMaskedLM)
    tok = AutoTokenizer.from_pretrained(dst, local_files_only=True)
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == 256
    text = "def f(x): return [MASK]"
    ids = tok(text)["input_ids"]
    assert ids == list(b"def f(x): return ") + [256]
    fill = pipeline("fill-mask", model=str(dst), top_k=5)
    got = fill(text)
    lm = LM.from_pretrained(dst)
    with torch.no_grad():
        logits = lm(torch.tensor([ids]))[0, -1]  # (v,)
    probs = torch.softmax(logits.double(), -1)
    want = torch.topk(probs, 5)
    assert [g["token"] for g in got] == want.indices.tolist()
    _assert_close(np.array([g["score"] for g in got]), want.values.numpy())
    # the masked-LM loss: labels at the counted positions, -100 elsewhere, no shift
    labels = torch.full((1, len(ids)), -100)
    labels[0, -1] = ord("x")
    out = model(torch.tensor([ids]), labels=labels)
    _assert_close(out.loss.detach().numpy(), -torch.log(probs[ord("x")]).numpy(), "loss")


def test_masked_lm_head_refuses_a_causal_lm():
    from flashcore.torch.hf import FlashcoreForMaskedLM

    with pytest.raises(ValueError, match="bidirectional"):
        FlashcoreForMaskedLM(FlashcoreConfig.from_lm_config(FLASH))


def test_save_pretrained_writes_the_byte_tokenizer_and_keeps_one_that_is_there(tmp_path):
    from transformers import AutoTokenizer

    byte = fc.LMConfig(block=FLASH.block, vocab_size=256, num_layers=1)
    model = FlashcoreForCausalLM.from_flashcore(LM(byte, seed=0))
    model.save_pretrained(tmp_path / "a")
    assert AutoTokenizer.from_pretrained(tmp_path / "a")("ab")["input_ids"] == [97, 98]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer.json").write_text("{}")  # the user's own: not replaced
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").read_text() == "{}"
    _hf_model(FLASH).save_pretrained(tmp_path / "c")  # 64 ids: not bytes, no tokenizer guessed
    assert not (tmp_path / "c" / "tokenizer.json").exists()


def test_the_byte_alphabet_is_tokenizers_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    from flashcore.torch.hf import _byte_chars

    chars = _byte_chars()
    assert len(set(chars)) == 256 and set(chars) == set(pre_tokenizers.ByteLevel.alphabet())


def test_export_refuses_an_existing_folder_unless_forced(tmp_path, run, capsys):
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep")
    assert cli.main(["export", str(run), str(dst)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (dst / "mine.txt").read_text() == "keep"
    assert cli.main(["export", str(run), str(dst), "--force"]) == 0
    assert not (dst / "mine.txt").exists() and (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folders left


def test_a_failed_export_leaves_nothing(tmp_path, run, monkeypatch, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli.main(["export", str(bad), str(tmp_path / "a")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "a")]) == 2
    assert "no run folder or file" in capsys.readouterr().err

    def crash(folder, source, config):  # dies half-way through writing the folder
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_write_folder", crash)
    assert cli.main(["export", str(run), str(tmp_path / "a")]) == 2
    assert "disk full" in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    (old / "mine.txt").write_text("keep")
    assert cli.main(["export", str(run), str(old), "--force"]) == 2
    assert (old / "mine.txt").read_text() == "keep"  # the old folder survives a failed --force
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "old"]


def test_docs_hugging_face_block_runs(tmp_path, run, monkeypatch, capsys):
    pytest.importorskip("jax", reason="the docs/huggingface.md block ends in flashcore.jax")
    text = (Path(__file__).resolve().parents[2] / "docs" / "huggingface.md").read_text()
    section = text.split("# Hugging Face\n", 1)[1]
    shell = re.search(r"```\n(flashcore export .*?)\s+#", section).group(1).split()
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "flash").symlink_to(run)
    assert cli.main(shell[1:]) == 0
    scope: dict = {}
    exec(compile(block, "docs/huggingface.md", "exec"), scope)
    assert capsys.readouterr().out.count("def ") >= 1
    tuned = scope["model"].model.to_canonical()
    for k, v in scope["lm"].to_canonical().items():
        np.testing.assert_array_equal(np.asarray(v), tuned[k], err_msg=k)
