"""Token corpora and tokenizers (docs/data.md): ``flashcore tokenize``, token-id files memory-mapped
and checked, text through a tokenizer, the run's tokenizer copy and fingerprints, ``eval``'s bits
per byte, ``generate`` through the tokenizer, and every bad input refused by name with nothing
written.

The corpus is a few standard-library files (about 50 kB), tokenized to a 1,000-id byte-level BPE
once per module; models are tiny (d = 16), so each training run takes seconds (JAX / TF: their
compilation).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from _data_parallel import records

pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import flashcore as fc  # noqa: E402
from flashcore import io  # noqa: E402
from flashcore.app import cli, evaluate, train  # noqa: E402
from flashcore.app.data import DataError, load_corpus, read_documents, sample_batch  # noqa: E402
from flashcore.app.engine import BACKENDS  # noqa: E402
from flashcore.app.tokenizer import load_tokenizer, tokenize  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402

VOCAB = 1000
FILES = ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "copy.py", "glob.py",
         "fnmatch.py", "heapq.py")  # fmt: skip
TINY = ["--dim", "16", "--layers", "2", "--qk-dim", "8", "--chunk", "8", "--context", "32",
        "--batch", "2", "--warmup", "2", "--eval-every", "0", "--eval-tokens", "256",
        "--log-every", "1", "--quiet", "--lr", "1e-2"]  # fmt: skip


def _installed(backend: str) -> bool:
    return importlib.util.find_spec("tensorflow" if backend == "tf" else backend) is not None


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in FILES:
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory, text) -> Path:
    out = tmp_path_factory.mktemp("tok") / "corpus"
    assert cli.main(["tokenize", str(text), "--vocab-size", str(VOCAB), "--out", str(out)]) == 0
    return out


def _train(argv: list[str], capsys=None) -> tuple[int, str]:
    if capsys is not None:
        capsys.readouterr()
    code = train.train_main(argv)
    return code, capsys.readouterr().err if capsys is not None else ""


def _hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# -- flashcore tokenize ----------------------------------------------------------------------


def test_tokenize_writes_a_deterministic_corpus(tok, text, tmp_path):
    meta = json.loads((tok / "meta.json").read_text())
    assert meta["vocab_size"] == VOCAB and meta["dtype"] == "uint16"
    assert sorted(p.name for p in tok.iterdir()) == sorted(
        ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    )
    tokenizer = load_tokenizer(tok / "tokenizer.json", vocab_size=VOCAB)
    docs = read_documents(text, meta["holdout"], text=True)
    for name, parts in (("train.bin", docs.train), ("val.bin", docs.valid)):
        ids = np.fromfile(tok / name, dtype="<u2")
        entry = meta["files"][name]
        assert entry["tokens"] == len(ids) and entry["documents"] == len(parts)
        assert entry["text_bytes"] == sum(len(d) for _, d in parts)
        assert ids.max() < VOCAB
        # the ids decode to the split's text (end-of-text separators dropped)
        assert tokenizer.decode(ids.tolist()) == "".join(d.decode() for _, d in parts)
    # the same text gives the same files, byte for byte
    again = tmp_path / "again"
    assert tokenize(text, again, VOCAB)["tokenizer_sha256"] == meta["tokenizer_sha256"]
    for name in ("tokenizer.json", "train.bin", "val.bin", "meta.json"):
        assert (again / name).read_bytes() == (tok / name).read_bytes(), name


def test_tokenize_refuses_bad_input_and_writes_nothing(tmp_path, text, capsys):
    small = tmp_path / "small.txt"
    small.write_text("abc abc abd\n" * 20)
    cases = [
        ([str(text), "--vocab-size", "100"], "at least 257 ids"),
        ([str(small), "--vocab-size", "5000"], "gives only"),
        ([str(tmp_path / "missing"), "--vocab-size", "300"], "no such file or folder"),
    ]
    for i, (argv, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert cli.main(["tokenize", *argv, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not _hidden_leftovers(tmp_path)
    # a folder that is not an earlier tokenize's is never replaced, --force or not
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        argv = ["tokenize", str(text), "--vocab-size", "300", "--out", str(mine), *force]
        assert cli.main(argv) == 2
        assert "--out" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_tokenize_force_replaces_an_earlier_corpus(tmp_path, text, capsys):
    out = tmp_path / "corpus"
    assert cli.main(["tokenize", str(text), "--vocab-size", "300", "--out", str(out)]) == 0
    assert cli.main(["tokenize", str(text), "--vocab-size", "400", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    argv = ["tokenize", str(text), "--vocab-size", "400", "--out", str(out), "--force"]
    assert cli.main(argv) == 0
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 400
    assert not _hidden_leftovers(tmp_path)


# -- reading token corpora -------------------------------------------------------------------


def test_token_files_are_memory_mapped_and_sampled_per_window(tok):
    corpus = load_corpus(tok)
    meta = json.loads((tok / "meta.json").read_text())
    assert isinstance(corpus.train, np.memmap) and isinstance(corpus.valid, np.memmap)
    assert corpus.vocab_size == VOCAB and corpus.kind == "tokens"
    assert corpus.bytes_per_token == meta["files"]["val.bin"]["text_bytes"] / len(corpus.valid)
    assert corpus.tokenizer == tok / "tokenizer.json"
    ids = np.fromfile(tok / "train.bin", dtype="<u2")
    rng = np.random.default_rng(5)
    x, y = sample_batch(corpus.train, 3, 16, rng)
    assert x.dtype == y.dtype == np.int64 and x.shape == (3, 16)
    starts = np.random.default_rng(5).integers(0, len(ids) - 16, size=3)
    for row, s in enumerate(starts):
        np.testing.assert_array_equal(x[row], ids[s : s + 16])
        np.testing.assert_array_equal(y[row], ids[s + 1 : s + 17])


def test_text_through_the_tokenizer_is_the_tokenized_corpus(tok, text):
    """--data TEXT --tokenizer: the same split, encoded the same way, as flashcore tokenize's."""
    corpus = load_corpus(text, tokenizer=tok / "tokenizer.json")
    assert corpus.kind == "text" and corpus.vocab_size == VOCAB
    np.testing.assert_array_equal(corpus.train, np.fromfile(tok / "train.bin", dtype="<u2"))
    np.testing.assert_array_equal(corpus.valid, np.fromfile(tok / "val.bin", dtype="<u2"))
    assert corpus.fingerprint == load_corpus(text, tokenizer=tok / "tokenizer.json").fingerprint


@pytest.mark.parametrize("fmt", ["bin-uint16", "bin-uint32", "npy"])
def test_one_token_file_is_split_deterministically(tmp_path, tok, fmt):
    ids = np.fromfile(tok / "train.bin", dtype="<u2")
    if fmt == "npy":
        path = tmp_path / "ids.npy"
        np.save(path, ids.astype(np.int32))
        corpus = load_corpus(path, vocab_size=VOCAB)
    else:
        dtype = fmt.split("-")[1]
        path = tmp_path / "ids.bin"
        ids.astype(np.dtype(dtype).newbyteorder("<")).tofile(path)
        (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": VOCAB, "dtype": dtype}))
        corpus = load_corpus(path)
    assert isinstance(corpus.train, np.memmap)
    cut = int(len(ids) * 0.95)
    np.testing.assert_array_equal(corpus.train, ids[:cut])
    np.testing.assert_array_equal(corpus.valid, ids[cut:])
    assert corpus.bytes_per_token is None  # no text byte count: bits per byte unknown
    assert load_corpus(path, vocab_size=VOCAB).fingerprint == corpus.fingerprint


# -- bad input: a clear error naming the file, nothing written -------------------------------


def _bad_data(tmp_path: Path, tok: Path, text: Path, case: str) -> tuple[list[str], str]:
    """-> train arguments for the bad input ``case``, and what the error must say."""
    ids = np.fromfile(tok / "train.bin", dtype="<u2")
    bad = tmp_path / "bad"
    bad.mkdir()
    if case == "id >= vocab":
        ids = ids.copy()
        ids[777] = VOCAB
        ids.tofile(bad / "train.bin")
        shutil.copy(tok / "val.bin", bad / "val.bin")
        return [
            "--data",
            str(bad),
            "--vocab-size",
            str(VOCAB),
        ], f"{bad / 'train.bin'}: token id 1000 at position 777"
    if case == "odd uint16 length":
        (bad / "ids.bin").write_bytes(ids.tobytes() + b"\x01")
        return [
            "--data",
            str(bad / "ids.bin"),
            "--vocab-size",
            str(VOCAB),
        ], f"{bad / 'ids.bin'}: {2 * len(ids) + 1} bytes is not a whole number of uint16"
    if case == "split shorter than the context":
        shutil.copy(tok / "train.bin", bad / "train.bin")
        ids[:20].tofile(bad / "val.bin")
        return [
            "--data",
            str(bad),
            "--vocab-size",
            str(VOCAB),
        ], f"{bad / 'val.bin'}: the held-out split has 20 tokens, fewer than context + 1 = 33"
    if case == "tokenizer size != --vocab-size":
        tokenizer = tok / "tokenizer.json"
        return [
            "--data",
            str(text),
            "--tokenizer",
            str(tokenizer),
            "--vocab-size",
            "999",
        ], f"{tokenizer}: the tokenizer has 1,000 ids but the vocabulary size is 999"
    if case == "tokenizer does not parse":
        (bad / "tokenizer.json").write_text('{"version": "1.0", "model": ')
        return [
            "--data",
            str(text),
            "--tokenizer",
            str(bad / "tokenizer.json"),
        ], f"{bad / 'tokenizer.json'}: not a Hugging Face tokenizers file"
    if case == "meta.json disagrees with --vocab-size":
        return [
            "--data",
            str(tok),
            "--vocab-size",
            "2000",
        ], f"--vocab-size 2000 disagrees with {tok / 'meta.json'}'s vocab_size 1000"
    if case == "no vocabulary size":
        ids.tofile(bad / "ids.bin")
        return [
            "--data",
            str(bad / "ids.bin"),
        ], f"{bad / 'ids.bin'}: token ids need a vocabulary size"
    if case == "truncated against meta.json":
        shutil.copytree(tok, bad, dirs_exist_ok=True)
        (bad / "val.bin").write_bytes((tok / "val.bin").read_bytes()[:-2])
        return ["--data", str(bad)], f"{bad / 'val.bin'}: holds"
    if case == "tokenizer missing":
        return [
            "--data",
            str(tok),
            "--tokenizer",
            str(bad / "nope.json"),
        ], f"--tokenizer {bad / 'nope.json'}: no such file"
    if case == "text that is not UTF-8":
        shutil.copytree(text, bad, dirs_exist_ok=True)
        (bad / "x.txt").write_bytes(b"caf\xe9 latin-1")
        return [
            "--data",
            str(bad),
            "--tokenizer",
            str(tok / "tokenizer.json"),
        ], f"{bad / 'x.txt'}: not UTF-8 text (byte 3)"
    raise AssertionError(case)  # fmt: skip


BAD_CASES = ["id >= vocab", "odd uint16 length", "split shorter than the context",
             "tokenizer size != --vocab-size", "tokenizer does not parse",
             "meta.json disagrees with --vocab-size", "no vocabulary size",
             "truncated against meta.json", "tokenizer missing", "text that is not UTF-8"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_token_data_is_refused_by_name_and_nothing_is_written(
    tmp_path, tok, text, case, capsys
):
    argv, message = _bad_data(tmp_path, tok, text, case)
    out = tmp_path / "run"
    code, err = _train([*TINY, "--steps", "1", "--out", str(out), *argv], capsys)
    assert code == 2 and message in err, err
    assert not out.exists()


def test_a_bin_file_of_uint16_rejects_odd_bytes_directly(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="not a whole number of uint16"):
        load_corpus(path, vocab_size=10)


# -- runs: train, resume, eval, generate -------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """run(backend) -> a 20-step run on the BPE corpus trained in that backend (once)."""
    made: dict[str, Path] = {}

    def run(backend: str) -> Path:
        if not _installed(backend):
            pytest.skip(f"{backend} is not installed")
        if backend not in made:
            out = tmp_path_factory.mktemp(backend) / "run"
            argv = [*TINY, "--steps", "20", "--backend", backend, "--data", str(tok)]
            assert train.train_main([*argv, "--out", str(out)]) == 0
            made[backend] = out
        return made[backend]

    return run


def _spec_first_loss(tok: Path, run: Path) -> float:
    """The loss of the run's first batch at its initial weights, by the spec in float64."""
    args = train.train_parser().parse_args([*TINY, "--data", str(tok)])
    config = train.build_config(args, VOCAB)
    params = {k: v.astype(np.float64) for k, v in train.initial_params(config, args).items()}
    x, y = sample_batch(load_corpus(tok).train, args.batch, args.context, np.random.default_rng(0))
    return float(fc.lm_loss(params, x, y, config=config))


def _spec_eval_loss(run: Path, tok: Path, tokens: int) -> float:
    """The held-out loss of the run's weights on the first ``tokens`` held-out tokens (float64)."""
    params, config = io.load(run / "model.safetensors")
    params = {k: v.astype(np.float64) for k, v in params.items()}
    valid = np.fromfile(tok / "val.bin", dtype="<u2").astype(np.int64)
    n = tokens // 32
    x = valid[: n * 32].reshape(n, 32)
    y = valid[1 : n * 32 + 1].reshape(n, 32)
    return float(fc.lm_loss(params, x, y, config=config))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bpe_corpus_trains_and_evaluates_in_every_backend(runs, tok, backend):
    """flashcore tokenize's 1,000-id corpus: 20 steps in each backend, the first step's loss that
    of the spec (float64) on the same batch and weights, the loss falling, the model's vocabulary
    the corpus', and the trained model's held-out loss (the backend's evaluation at the end of the
    run) that of the spec on the same weights and windows, to the float32 loss row; bits per byte
    from meta.json's held-out text bytes."""
    run = runs(backend)
    losses, evals = records(run)
    assert sorted(losses) == list(range(1, 21)) and np.isfinite(list(losses.values())).all()
    assert_close(losses[1], _spec_first_loss(tok, run), quantity="loss", dtype="float32")
    assert np.mean([losses[s] for s in range(16, 21)]) < np.mean([losses[s] for s in range(1, 6)])
    params, config = io.load(run / "model.safetensors")
    assert config.vocab_size == VOCAB and params["embed.weight"].shape[0] == VOCAB
    header = io.read_header(run / "model.safetensors")
    meta = json.loads((tok / "meta.json").read_text())
    assert header["data_kind"] == "tokens"
    assert header["corpus_sha256"] == load_corpus(tok).fingerprint
    assert header["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert (run / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    want = _spec_eval_loss(run, tok, 256)
    assert_close(evals[20], want, quantity="loss", dtype="float32", err_msg=backend)
    (ev,) = [json.loads(line)["eval"] for line in (run / "log.jsonl").read_text().splitlines()
             if "eval" in line]  # fmt: skip
    val = meta["files"]["val.bin"]
    bpb = ev["loss"] / np.log(2) * val["tokens"] / val["text_bytes"]
    assert_close(ev["bits_per_byte"], bpb, quantity="loss", dtype="float64")


@pytest.mark.slow
def test_every_backend_trains_the_same_curve(runs):
    """The 20 training losses and the held-out loss of the torch, JAX and TF runs (same start,
    same batches) agree to the float32 loss row."""
    curves = {}
    for backend in BACKENDS:
        if _installed(backend):
            losses, evals = records(runs(backend))
            curves[backend] = [losses[s] for s in range(1, 21)] + [evals[20]]
    for backend, curve in curves.items():
        assert_close(curve, curves["torch"], quantity="loss", dtype="float32", err_msg=backend)


def test_eval_reads_the_runs_own_token_data(runs, tok):
    """``flashcore eval RUN`` without --data: the run's corpus, its bits per byte from meta.json."""
    run = runs("torch")
    (row,) = evaluate.evaluate_checkpoint(run, "torch", eval_tokens=256)
    assert row["tokens"] == 256
    assert_close(row["loss"], _spec_eval_loss(run, tok, 256), quantity="loss", dtype="float32")
    val = json.loads((tok / "meta.json").read_text())["files"]["val.bin"]
    bpb = row["loss"] / np.log(2) * val["tokens"] / val["text_bytes"]
    assert_close(row["bits_per_byte"], bpb, quantity="loss", dtype="float64")


def test_generate_round_trips_text_through_the_tokenizer(runs, tok, capsys):
    run = runs("torch")
    tokenizer = load_tokenizer(tok / "tokenizer.json")
    prompt = "def copy(x):\n    return x  # é"
    capsys.readouterr()
    argv = ["generate", str(run), "--prompt", prompt, "--max-new", "6", "--temperature", "0"]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_tokens"] == tokenizer.encode(prompt, add_special_tokens=False).ids
    assert len(out["new_tokens"]) == 6 and max(out["new_tokens"]) < VOCAB
    assert tokenizer.decode(out["prompt_tokens"]) == prompt  # the round trip
    assert out["text"] == tokenizer.decode(out["prompt_tokens"] + out["new_tokens"])
    assert out["text"].startswith(prompt)
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == out["text"] + "\n"


def test_generate_needs_the_models_own_tokenizer(runs, tok, tmp_path, capsys):
    run = runs("torch")
    lone = tmp_path / "model.safetensors"
    shutil.copy(run / "model.safetensors", lone)
    argv = ["generate", str(lone), "--prompt", "def ", "--max-new", "2"]
    assert cli.main(argv) == 2
    assert "no tokenizer.json is in its run folder" in capsys.readouterr().err
    assert cli.main([*argv, "--tokenizer", str(tok / "tokenizer.json")]) == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads((tok / "tokenizer.json").read_text()), indent=3))
    assert cli.main([*argv, "--tokenizer", str(other)]) == 2
    assert f"{other}: not the tokenizer" in capsys.readouterr().err


def test_resume_refuses_other_data_or_another_tokenizer(tmp_path, tok, text, capsys):
    data = tmp_path / "text"
    shutil.copytree(text, data)
    tokenizer = tmp_path / "tokenizer.json"
    shutil.copy(tok / "tokenizer.json", tokenizer)
    run = tmp_path / "run"
    argv = [*TINY, "--steps", "4", "--stop-after", "2", "--data", str(data)]
    assert train.train_main([*argv, "--tokenizer", str(tokenizer), "--out", str(run)]) == 0
    assert io.read_header(run / "model.safetensors")["data_kind"] == "text"
    # the same bytes in another layout: the same ids, but not the same tokenizer file
    original = tokenizer.read_text()
    tokenizer.write_text(json.dumps(json.loads(original), indent=2))
    code, err = _train(["--resume", str(run), "--quiet"], capsys)
    assert code == 2 and "the tokenizer differs from the one the run trained on" in err, err
    tokenizer.write_text(original)
    first = sorted(data.iterdir())[0]
    first.write_text(first.read_text() + "\nextra = 1\n")
    code, err = _train(["--resume", str(run), "--quiet"], capsys)
    assert code == 2 and "the corpus differs from the one the run trained on" in err, err
    first.write_text(first.read_text()[: -len("\nextra = 1\n")])
    assert train.train_main(["--resume", str(run), "--quiet"]) == 0
    assert sorted(records(run)[0]) == [1, 2, 3, 4]
    # eval defaults to the run's data through its tokenizer copy
    (row,) = evaluate.evaluate_checkpoint(run, "torch", eval_tokens=128)
    assert row["tokens"] == 128 and row["bits_per_byte"] is not None


def test_a_masked_lm_on_token_ids(tmp_path, tok):
    run = tmp_path / "run"
    argv = [*TINY, "--objective", "mlm", "--steps", "2", "--data", str(tok), "--out", str(run)]
    assert train.train_main(argv) == 0
    _, config = io.load(run / "model.safetensors")
    assert config.vocab_size == VOCAB + 1  # the mask token: id 1000
    (row,) = evaluate.evaluate_checkpoint(run, "torch", eval_tokens=256)
    assert row["objective"] == "mlm" and np.isfinite(row["loss"])


def test_eval_says_bits_per_byte_is_unknown_for_a_bare_bin(tmp_path, tok, capsys):
    bare = tmp_path / "ids.bin"
    shutil.copy(tok / "train.bin", bare)
    run = tmp_path / "run"
    argv = [*TINY, "--steps", "1", "--data", str(bare), "--vocab-size", str(VOCAB)]
    assert train.train_main([*argv, "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--eval-tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "unknown" in out.splitlines()[-1]
    assert cli.main(["eval", str(run), "--eval-tokens", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["bits_per_byte"] is None
    # generate without a tokenizer: refused by name
    assert cli.main(["generate", str(run), "--prompt", "x"]) == 2
    assert "trained on token ids without a tokenizer" in capsys.readouterr().err
