"""The quality experiment (``flashcore quality``) end to end at toy size: both objectives, a
learning-rate sweep of two, the files and the table it writes, resuming after a kill, and the
refusals (unequal models, a conflicting --resume, a folder that already holds an experiment)."""

import json
import re

import pytest

pytest.importorskip("torch", reason="the experiment trains with the torch engine")

from flashcore.app import quality  # noqa: E402

TOY = [
    "--steps", "4", "--eval-every", "2", "--eval-tokens", "128", "--tokens-per-step", "128",
    "--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--heads", "2",
    "--warmup", "1", "--time-rounds", "2", "--time-warmup", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text file, so that each toy run does not read the whole standard library."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(3000))
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("quality")
    argv = ["--settings", "clm-64", "mlm-64", "--lrs", "1e-3", "3e-3", "--data", corpus]
    rc = quality.main([*argv, *TOY, "--out", str(out)])
    return out, rc, argv


def test_experiment_writes_results_table_and_plots(experiment):
    out, rc, _ = experiment
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    # the sweep (2 lrs x 4 archs) at clm-64, each arch's best lr reused at mlm-64
    assert len(runs) == 3 * len(quality.ARCHS)
    sweep = [r for r in runs if r["setting"] == "clm-64"]
    assert sorted((r["arch"], r["lr"]) for r in sweep) == sorted(
        (a, lr) for a in quality.ARCHS for lr in (1e-3, 3e-3)
    )
    for r in runs:
        assert [p["step"] for p in r["curve"]] == [2, 4]  # every eval of every run, to the end
        assert r["tokens_seen"] == 4 * 128 and r["steps"] == 4
    best = {a: min((r for r in sweep if r["arch"] == a), key=lambda r: r["curve"][-1]["loss"])
            for a in quality.ARCHS}  # fmt: skip
    for r in runs:
        if r["setting"] == "mlm-64":
            assert r["lr"] == best[r["arch"]]["lr"] and r["objective"] == "mlm"
    flash = [r["params"] for r in runs if r["setting"] == "clm-64" and r["arch"] == "flash"][0]
    assert all(abs(r["params"] - flash) <= 0.02 * flash for r in sweep)
    assert set(results["step_times"]) == {"clm-64", "mlm-64"}
    assert all(v["median_s"] > 0 for d in results["step_times"].values() for v in d.values())
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| clm-64") or
            line.startswith("| mlm-64")]  # fmt: skip
    assert len(rows) == 2 * len(quality.ARCHS) and "| clm-64 | FLASH |" in table
    # both Transformer++ models, each labelled with its depth (--layers 2: 1 and 2 blocks)
    assert "| clm-64 | Transformer++ (1 block) |" in table
    assert "| clm-64 | Transformer++ (2 blocks) |" in table
    assert "vs Transformer++ (1 block) | " in table and "vs Transformer++ (2 blocks) | " in table
    for setting in ("clm-64", "mlm-64"):
        for model in ("FLASH", "FLASH-Quad"):
            for ref in ("Transformer++ (1 block)", "Transformer++ (2 blocks)"):
                assert re.search(
                    rf"- {setting}: {re.escape(model)} is (not )?within 2% of {re.escape(ref)} ",
                    table,
                ), (setting, model, ref)
    for name in ("loss_vs_steps.png", "loss_vs_seconds.png"):
        assert (out / name).stat().st_size > 1000


def test_summary_follows_from_the_curves_and_step_times(experiment):
    out, _, _ = experiment
    results = json.loads((out / "results.json").read_text())
    rows = quality.summarize(results["runs"], results["step_times"], ["clm-64", "mlm-64"])
    assert rows == results["summary"]
    for row in rows:
        for ref in quality.REFERENCES:
            tpp = next(r for r in rows if r["setting"] == row["setting"] and r["arch"] == ref)
            vs = row["vs"][ref]
            gap = (row["final_bpb"] - tpp["final_bpb"]) / tpp["final_bpb"] * 100
            assert vs["gap_pct"] == pytest.approx(gap)
            assert vs["within_2pct"] == (abs(gap) <= 2)
            if vs.get("seconds_to_tpp") is not None:
                assert vs["seconds_to_tpp"] == pytest.approx(vs["steps_to_tpp"] * row["step_s"])
        assert row["gap_pct"] == row["vs"]["transformer"]["gap_pct"]  # the paper's accounting


def test_resume_reads_finished_runs_back(experiment, monkeypatch):
    out, _, argv = experiment
    trained = []
    monkeypatch.setattr(quality, "_train_run", lambda run, flags: trained.append(run))
    assert quality.main(["--resume", "--out", str(out), "--quiet"]) == 0
    assert trained == []  # nothing redone


def test_a_fresh_clone_resumes_from_the_committed_records(experiment, tmp_path, monkeypatch):
    """Run folders are not committed; OUT/records are: without the folders every finished run is
    read back from its record, and a record that is not this run's (other flags) is retrained."""
    import shutil

    out, _, _ = experiment
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("runs"))
    records = sorted((clone / "records").glob("*.json"))
    assert len(records) == 3 * len(quality.ARCHS)
    rec = json.loads(records[0].read_text())
    assert rec["curve"][-1]["step"] == 4 and "commit" in rec
    rec["run_flags"] = [*rec["run_flags"], "--changed"]
    records[0].write_text(json.dumps(rec))
    exp = json.loads((clone / "experiment.json").read_text())
    exp["args"]["out"] = str(clone)
    (clone / "experiment.json").write_text(json.dumps(exp))
    trained = []
    monkeypatch.setattr(quality, "_train_run", lambda run, flags: trained.append(run.name))
    monkeypatch.setattr(quality, "read_curve", lambda run: json.loads(
        (out / "records" / f"{run.name}.json").read_text())["curve"])  # fmt: skip
    assert quality.main(["--resume", "--out", str(clone), "--quiet"]) == 0
    assert trained == [records[0].stem]
    first = json.loads((out / "results.json").read_text())["runs"]
    again = json.loads((clone / "results.json").read_text())["runs"]
    assert [r["curve"] for r in again] == [r["curve"] for r in first]


def test_a_killed_experiment_continues_where_it_stopped(tmp_path, corpus, monkeypatch):
    archs = ["flash", "gau", "transformer"]
    argv = ["--settings", "clm-64", "--lrs", "1e-3", "--archs", *archs, "--data", corpus, *TOY,
            "--out", str(tmp_path)]  # fmt: skip
    real, calls = quality._train_run, []

    def killed_after_two(run, flags):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the experiment is stopped during its third run
        calls.append(run.name)
        real(run, flags)

    monkeypatch.setattr(quality, "_train_run", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        quality.main(argv)
    assert not (tmp_path / "results.json").exists()
    again = []
    monkeypatch.setattr(
        quality, "_train_run", lambda run, flags: (again.append(run.name), real(run, flags))
    )
    assert quality.main(["--resume", "--out", str(tmp_path), "--quiet"]) == 0
    assert again == ["clm-64-transformer-lr0.001"]  # only the run that had not finished
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["arch"] for r in runs] == archs


def test_resume_may_extend_the_sweep(tmp_path, corpus, monkeypatch):
    """--resume --lrs with more rates trains only the new rates' runs and saves the longer sweep;
    dropping a rate is a contradiction."""
    argv = ["--settings", "clm-64", "--lrs", "1e-3", "--archs", "flash", "--data", corpus, *TOY,
            "--out", str(tmp_path)]  # fmt: skip
    assert quality.main(argv) == 0
    real, trained = quality._train_run, []
    monkeypatch.setattr(
        quality, "_train_run", lambda run, flags: (trained.append(run.name), real(run, flags))
    )
    assert quality.main(["--resume", "--lrs", "1e-3", "3e-3", "--out", str(tmp_path),
                         "--quiet"]) == 0  # fmt: skip
    assert trained == ["clm-64-flash-lr0.003"]
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert saved["args"]["lrs"] == [1e-3, 3e-3]
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted(r["lr"] for r in runs) == [1e-3, 3e-3]
    assert quality.main(["--resume", "--lrs", "3e-3", "--out", str(tmp_path)]) == 2
    # a model added on --resume: only its runs are trained, at every rate of the sweep
    del trained[:]
    assert quality.main(["--resume", "--archs", "flash", "transformer-deep", "--out",
                         str(tmp_path), "--quiet"]) == 0  # fmt: skip
    assert trained == ["clm-64-transformer-deep-lr0.001", "clm-64-transformer-deep-lr0.003"]
    assert json.loads((tmp_path / "experiment.json").read_text())["args"]["archs"] == [
        "flash",
        "transformer-deep",
    ]
    assert quality.main(["--resume", "--archs", "gau", "--out", str(tmp_path)]) == 2  # a drop


def test_extend_edges_adds_a_rate_past_a_best_rate_at_an_edge(tmp_path, corpus, monkeypatch):
    """--extend-edges: the sweep goes on past a best rate at an edge (twice the highest, half the
    lowest) and stops at a best rate inside; raising it on --resume trains only the new runs."""
    loss = {
        "flash": lambda lr: -lr,
        "gau": lambda lr: lr,
        "transformer": lambda lr: (lr - 2e-3) ** 2,
    }
    trained = []

    def fake_train(run, flags):
        trained.append(run.name)

    def fake_curve(run):
        arch, lr = run.name.split("-")[2], float(run.name.split("-lr")[1])
        return [{"step": 4, "loss": 1.0 + loss[arch](lr), "bpb": 1.0}]

    monkeypatch.setattr(quality, "_train_run", fake_train)
    monkeypatch.setattr(quality, "read_curve", fake_curve)
    argv = ["--settings", "clm-64", "--lrs", "1e-3", "2e-3", "4e-3", "--archs", "flash", "gau",
            "transformer", "--data", corpus, *TOY, "--out", str(tmp_path)]  # fmt: skip
    assert quality.main(argv) == 0
    assert len(trained) == 9
    del trained[:]
    assert quality.main(["--resume", "--extend-edges", "2", "--out", str(tmp_path), "--quiet"]) == 0
    # FLASH is best at the highest rate (8e-3, then 1.6e-2), FLASH-Quad at the lowest (5e-4,
    # then 2.5e-4); Transformer++'s best (2e-3) is inside: nothing more
    assert trained == [
        "clm-64-flash-lr0.008", "clm-64-flash-lr0.016", "clm-64-gau-lr0.0005",
        "clm-64-gau-lr0.00025",
    ]  # fmt: skip
    assert json.loads((tmp_path / "experiment.json").read_text())["args"]["extend_edges"] == 2
    rows = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert {r["arch"]: r["lr"] for r in rows} == {
        "flash": 1.6e-2,
        "gau": 2.5e-4,
        "transformer": 2e-3,
    }
    assert quality.edge_rate([], "clm-64", "flash") is None


def test_resume_may_sweep_another_setting(tmp_path, corpus, monkeypatch):
    """--resume --sweep-at with a setting added sweeps it as well (only the new runs are trained);
    an unswept setting reuses the best rates of the swept setting with its objective."""
    loss = {"clm": lambda lr: -lr, "mlm": lambda lr: lr}  # clm best at the top, mlm at the bottom
    trained = []

    def fake_curve(run):
        objective, lr = run.name.split("-")[0], float(run.name.split("-lr")[1])
        return [{"step": 4, "loss": 1.0 + loss[objective](lr), "bpb": 1.0}]

    monkeypatch.setattr(quality, "_train_run", lambda run, flags: trained.append(run.name))
    monkeypatch.setattr(quality, "read_curve", fake_curve)
    argv = ["--settings", "clm-64", "clm-128", "mlm-64", "--lrs", "1e-3", "2e-3", "--archs",
            "flash", "--data", corpus, *TOY, "--out", str(tmp_path)]  # fmt: skip
    assert quality.main(argv) == 0
    assert trained == [
        "clm-64-flash-lr0.001", "clm-64-flash-lr0.002", "clm-128-flash-lr0.002",
        "mlm-64-flash-lr0.002",
    ]  # fmt: skip
    del trained[:]
    resume = ["--resume", "--out", str(tmp_path), "--quiet", "--sweep-at"]
    assert quality.main([*resume, "clm-64", "mlm-64"]) == 0
    assert trained == ["mlm-64-flash-lr0.001"]  # mlm-64's best (1e-3) differs from clm-64's
    saved = json.loads((tmp_path / "experiment.json").read_text())["args"]
    assert saved["sweep_at"] == ["clm-64", "mlm-64"]
    rows = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert {(r["setting"], r["lr"]) for r in rows} == {
        ("clm-64", 2e-3), ("clm-128", 2e-3), ("mlm-64", 1e-3),
    }  # fmt: skip
    assert quality.main([*resume, "mlm-64"]) == 2  # dropping a swept setting contradicts it
    assert quality.main([*resume, "clm-64", "mlm-64"]) == 0  # the same sweep: nothing new


def test_refusals(tmp_path, corpus, capsys):
    base = ["--settings", "clm-64", "--lrs", "1e-3", "--data", corpus, *TOY]
    assert quality.main(["--resume", "--out", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "experiment.json").write_text(
        json.dumps(
            {
                "format": quality.FORMAT,
                "version": quality.VERSION,
                "args": quality._plain(quality.parser().parse_args(base)),
            }
        )  # fmt: skip
    )
    assert quality.main([*base, "--out", str(tmp_path / "b")]) == 2
    assert "holds an experiment" in capsys.readouterr().err
    assert quality.main(["--resume", "--steps", "9", "--out", str(tmp_path / "b")]) == 2
    assert "--steps: the experiment has 4, you gave 9" in capsys.readouterr().err
    assert quality.main(["--resume", "--force", "--out", str(tmp_path / "b")]) == 2


def test_unequal_models_are_refused_before_anything_is_written(tmp_path, capsys):
    args = quality.parser().parse_args(
        [
            "--dim",
            "32",
            "--layers",
            "2",
            "--qk-dim",
            "16",
            "--chunk",
            "16",
            "--heads",
            "2",
            "--param-tolerance",
            "0.0001",
        ]  # fmt: skip
    )
    with pytest.raises(quality.QualityError, match="parameter counts differ"):
        quality.model_argv(quality.Setting.parse("clm-64"), args)
    rc = quality.main(["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16",
                       "--heads", "2", "--param-tolerance", "0.0001", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "parameter counts differ" in capsys.readouterr().err
    assert not (tmp_path / "experiment.json").exists()


def test_settings_parse():
    assert quality.Setting.parse("mlm-1024") == quality.Setting("mlm", 1024)
    for bad in ("clm", "xlm-64", "clm-0", "clm-x"):
        with pytest.raises(Exception, match="a setting is"):
            quality.Setting.parse(bad)


def test_the_baseline_row_is_its_own_final_step_and_a_missing_speedup_reads_dash():
    def run(arch, losses):
        curve = [{"step": 10 * (i + 1), "loss": v, "bpb": v} for i, v in enumerate(losses)]
        return {"setting": "clm-64", "arch": arch, "lr": 1e-3, "params": 1, "curve": curve,
                "tokens_seen": 1}  # fmt: skip

    records = [run("transformer", [3.0, 2.0, 1.90, 1.95]), run("flash", [3.0, 2.5, 2.4, 2.3])]
    times = {"clm-64": {"transformer": {"median_s": 0.5}, "flash": {"median_s": 0.25}}}
    rows = {r["arch"]: r for r in quality.summarize(records, times, ["clm-64"])}
    # its third evaluation (1.90) is below its final loss (1.95), yet it reaches it at step 40
    assert rows["transformer"]["steps_to_tpp"] == 40 and rows["transformer"]["speedup"] == 1.0
    assert rows["flash"]["steps_to_tpp"] is None and "speedup" not in rows["flash"]
    flash_line = [ln for ln in quality.table(list(rows.values())).splitlines() if "FLASH" in ln]
    assert flash_line[0].endswith("| - | - |")


def test_crossing_interpolates_in_steps():
    curve = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}]
    assert quality.crossing(curve, 2.5) == 15
    assert quality.crossing(curve, 3.5) == 10
    assert quality.crossing(curve, 1.0) is None


def test_record_only_records_finished_runs_and_trains_nothing(tmp_path, corpus, capsys):
    """--record-only: a run folder trained outside the experiment (``flashcore train`` with the
    command it prints) is recorded; nothing is trained and no report is written."""
    from flashcore.app.train import train_main

    argv = ["--settings", "clm-64", "--lrs", "1e-3", "--archs", "flash", "gau", "--data", corpus,
            *TOY, "--out", str(tmp_path), "--record-only"]  # fmt: skip
    assert quality.main(argv) == 0
    out = capsys.readouterr().out
    commands = [line.split("its command: flashcore train ", 1)[1] for line in out.splitlines()
                if "its command:" in line]  # fmt: skip
    assert len(commands) == 2 and not (tmp_path / "records").exists()
    assert not (tmp_path / "results.json").exists()
    assert train_main(commands[1].split()) == 0  # the FLASH-Quad run, trained by hand
    assert quality.main(["--resume", "--record-only", "--out", str(tmp_path), "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["clm-64-gau-lr0.001.json"]
    assert not (tmp_path / "results.json").exists()
    assert quality.main(["--resume", "--out", str(tmp_path), "--quiet"]) == 0  # trains FLASH
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted(r["arch"] for r in runs) == ["flash", "gau"]
