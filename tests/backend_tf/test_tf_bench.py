"""``flashcore bench --backend tf`` runs end to end (tiny sizes, one XLA compile per row)."""

import pytest

pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")

from flashcore.app.cli import main as cli  # noqa: E402


def test_bench_prints_a_row_per_length_and_dtype(capsys):
    argv = ["bench", "--backend", "tf", "--lengths", "40", "--dtypes", "bfloat16"]
    assert cli(argv + ["--dim", "16", "--chunk", "16", "--qk", "8", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 causal FLASH layers" in lines[0] and "us/token" in lines[1]
    rows = [line.split() for line in lines[3:]]
    assert [r[:2] for r in rows] == [["40", "bfloat16"]]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        cli(["bench", "--backend", "tf", "--dtypes", "float16"])
