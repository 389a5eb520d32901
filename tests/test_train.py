"""train / resume / eval / generate on a tiny corpus slice (torch engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _data_parallel import make_corpus, records

pytest.importorskip("torch", reason="the training tests use the torch engine")

from flashcore import io  # noqa: E402
from flashcore.app import train  # noqa: E402
from flashcore.conformance.tolerances import training_tolerance  # noqa: E402

LOSS_RTOL, _ = training_tolerance("resume", "loss")
PARAM_RTOL, PARAM_ATOL = training_tolerance("resume", "params")

TINY = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "48",
        "--batch", "2", "--eval-tokens", "192", "--log-every", "1", "--quiet", "--warmup", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _losses(run: Path) -> dict[int, float]:
    return records(run)[0]


def test_resume_continues_the_same_loss_curve(tmp_path, corpus):
    common = [*TINY, "--data", str(corpus), "--eval-every", "4", "--seed", "3"]
    assert train.train_main([*common, "--steps", "8", "--out", str(tmp_path / "straight")]) == 0
    split_args = [*common, "--steps", "8", "--stop-after", "4", "--out", str(tmp_path / "split")]
    assert train.train_main(split_args) == 0
    assert train.train_main(["--resume", str(tmp_path / "split"), "--steps", "8", "--quiet"]) == 0
    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 9))
    np.testing.assert_allclose(
        [split[s] for s in range(1, 9)], [straight[s] for s in range(1, 9)], rtol=LOSS_RTOL
    )
    assert straight[8] < straight[1]  # it learns
    params, config = io.load(tmp_path / "split" / "model.safetensors")
    ref, _ = io.load(tmp_path / "straight" / "model.safetensors")
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=PARAM_RTOL, atol=PARAM_ATOL)


def test_eval_and_generate(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert train.train_main([*TINY, "--data", str(corpus), "--steps", "3", "--out", str(run)]) == 0
    rows = train.evaluate_checkpoint(run, "torch", data=corpus, eval_tokens=192)
    assert rows[0]["backend"] == "torch" and 0 < rows[0]["bits_per_byte"] < 9
    capsys.readouterr()
    assert (
        train.generate_main([str(run), "--prompt", "def ", "--max-new", "20", "--top-k", "5"]) == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.encode()) >= 4


def test_bad_arguments_and_data(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit):
        train.train_main(["--steps", "0"])
    assert "must be > 0" in capsys.readouterr().err
    assert train.train_main([*TINY, "--data", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    small = tmp_path / "small.txt"
    small.write_text("tiny")
    assert train.train_main([*TINY, "--data", str(small), "--steps", "1"]) == 2
    assert "fewer than context" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.train_main([*TINY, "--data", str(corpus), "--qk-dim", "15", "--steps", "1"])
    assert "qk_dim" in capsys.readouterr().err
    assert train.eval_main([str(tmp_path / "nothing")]) == 2
    assert "no weight file" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["flash", "gau"])
def test_rel_bias_init_starts_every_bias_weight_there(tmp_path, corpus, arch, capsys):
    args = train.train_parser().parse_args([*TINY, "--arch", arch, "--rel-bias-init", "0.05"])
    config = train.build_config(args)
    params = train.initial_params(config, args)
    plain = train.initial_params(config, train.train_parser().parse_args([*TINY, "--arch", arch]))
    biases = [k for k in params if k.endswith(".rel_bias.weight")]
    assert len(biases) == 2  # one per layer
    for k in params:
        if k in biases:
            np.testing.assert_array_equal(params[k], np.full_like(plain[k], 0.05))
        else:
            np.testing.assert_array_equal(params[k], plain[k])  # the rest is flashcore.init's
    run = tmp_path / "run"
    common = [*TINY, "--arch", arch, "--data", str(corpus), "--rel-bias-init", "0.05"]
    assert train.train_main([*common, "--steps", "4", "--stop-after", "2", "--out", str(run)]) == 0
    # the run's own argument: resuming may not change it
    assert train.train_main(["--resume", str(run), "--rel-bias-init", "0.1"]) == 2
    assert "--rel-bias-init: the run has 0.05, you gave 0.1" in capsys.readouterr().err
    assert train.train_main(["--resume", str(run), "--quiet"]) == 0


def test_init_names_the_start_and_an_older_run_resumes_as_the_paper_start(tmp_path, corpus, capsys):
    """--init (default uniform) is the block's FlashConfig.init; --init paper starts the biases
    at 0; a run whose run.json predates --init was drawn from the paper's start and restarts so."""
    args = train.train_parser().parse_args(TINY)
    assert args.init == "uniform" and train.build_config(args).block.init == "uniform"
    paper = train.train_parser().parse_args([*TINY, "--init", "paper"])
    params = train.initial_params(train.build_config(paper), paper)
    assert all(np.all(v == 0) for k, v in params.items() if k.endswith(".rel_bias.weight"))
    run = tmp_path / "run"
    common = [*TINY, "--data", str(corpus), "--init", "paper", "--steps", "4"]
    assert train.train_main([*common, "--stop-after", "2", "--out", str(run)]) == 0
    assert train.train_main(["--resume", str(run), "--init", "uniform"]) == 2
    assert "--init: the run has paper, you gave uniform" in capsys.readouterr().err
    # an older run: run.json without "init", no checkpoint yet -> restarts from the paper's start
    old = tmp_path / "old"
    old.mkdir()
    info = json.loads((run / "run.json").read_text())
    del info["args"]["init"]
    info["args"]["out"] = str(old)
    (old / "run.json").write_text(json.dumps(info))
    assert train.train_main(["--resume", str(old), "--quiet"]) == 0
    _, config = io.load(old / "model.safetensors")
    assert config.block.init == "paper"
    with pytest.raises(SystemExit):
        train.train_main(
            [*TINY, "--arch", "transformer", "--init", "paper", "--out", str(tmp_path / "t")]
        )
    assert "--init needs --arch flash or gau" in capsys.readouterr().err


def test_rel_bias_init_refuses_what_it_cannot_do(tmp_path, corpus, capsys):
    for bad in ("nan", "inf", "x"):
        with pytest.raises(SystemExit):
            train.train_main([*TINY, "--rel-bias-init", bad, "--steps", "1"])
        assert "--rel-bias-init" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.train_main(
            [*TINY, "--arch", "transformer", "--rel-bias-init", "0.05", "--data", str(corpus),
             "--steps", "1", "--out", str(tmp_path / "t")]
        )  # fmt: skip
    assert "needs --arch flash or gau" in capsys.readouterr().err


def test_a_run_folder_of_the_older_flat_layout_resumes(tmp_path, corpus, capsys):
    """Runs saved before checkpoint folders (model and train_state at the top) still resume; one
    whose two files disagree (a save cut between them) is refused by name."""
    run, old = tmp_path / "run", tmp_path / "old"
    common = [*TINY, "--data", str(corpus), "--eval-every", "2"]
    assert train.train_main([*common, "--steps", "6", "--stop-after", "4", "--out", str(run)]) == 0
    old.mkdir()
    for name in ("model.safetensors", "train_state.safetensors"):
        (old / name).write_bytes((run / "ckpt" / "step-000004" / name).read_bytes())
    (old / "log.jsonl").write_bytes((run / "log.jsonl").read_bytes())
    assert train.train_main(["--resume", str(old), "--steps", "6", "--quiet"]) == 0
    assert sorted(_losses(old)) == list(range(1, 7))
    (old / "train_state.safetensors").write_bytes(
        (run / "ckpt" / "step-000002" / "train_state.safetensors").read_bytes()
    )
    shutil.rmtree(old / "ckpt")
    capsys.readouterr()
    assert train.train_main(["--resume", str(old), "--steps", "8", "--quiet"]) == 2
    assert "interrupted" in capsys.readouterr().err


def test_lr_schedule():
    kw = dict(lr=1.0, warmup=10, steps=110, schedule="cosine", min_ratio=0.1)
    assert train.lr_at(5, **kw) == 0.5 and train.lr_at(10, **kw) == 1.0
    assert abs(train.lr_at(110, **kw) - 0.1) < 1e-12 and abs(train.lr_at(60, **kw) - 0.55) < 1e-12
