"""``flashcore bench --backend jax`` at a tiny size: it runs and prints one row per (T, dtype)."""

import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")

from flashcore.app.cli import main as cli  # noqa: E402

TINY = ["--dim", "16", "--chunk", "8", "--qk", "8", "--repeats", "1"]


def test_bench_prints_a_row_per_length_and_dtype(capsys):
    assert (
        cli(["bench", "--backend", "jax", "--lengths", "16,1K", "--dtypes", "float32", *TINY]) == 0
    )
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    body = [r for r in rows if r and r[0].isdigit()]
    assert [(r[0], r[1]) for r in body] == [("16", "float32"), ("1024", "float32")]
    assert all(float(r[3]) > 0 for r in body)  # us/token


@pytest.mark.parametrize("bad", [["--lengths", "abc"], ["--dtypes", "float16"], ["--repeats", "0"]])
def test_bench_rejects_bad_options(bad):
    with pytest.raises(SystemExit) as err:
        cli(["bench", "--backend", "jax", *bad])
    assert err.value.code == 2
