"""``flashcore train --context-parallel`` / ``--shard`` refuse what they cannot train, with a
clear message and before anything is written (one process: the checks come before the engine's
process group or mesh)."""

from __future__ import annotations

import pytest
from _data_parallel import TINY, make_corpus

from flashcore.app import cli

REFUSED = [
    (["--context-parallel", "2", "--arch", "gau"], "needs --arch flash"),
    (["--context-parallel", "2", "--arch", "transformer"], "needs --arch flash"),
    (["--context-parallel", "2", "--backend", "tf"], "the tf backend trains on one device"),
    (["--shard", "--backend", "tf"], "the tf backend trains on one device"),
    (["--context-parallel", "2", "--context", "48"], "--context 48 must be a multiple of 2 x"),
    (["--context-parallel", "2", "--objective", "mlm"], "trains a causal LM only"),
    (["--context-parallel", "2", "--dropout", "0.1"], "applies no dropout"),
    (["--context-parallel", "2", "--shard"], "cannot be combined"),
    (["--context-parallel", "2", "--grad-accum", "2"], "does not combine with --grad-accum"),
    (["--context-parallel", "2", "--checkpoint-activations"], "does not combine with --grad"),
]


@pytest.mark.parametrize("extra, message", REFUSED, ids=[" ".join(e) for e, _ in REFUSED])
def test_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = [*TINY, "--data", str(make_corpus(tmp_path / "corpus")), "--steps", "1"]
    assert cli.main([*args, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_more_context_workers_than_there_are_is_refused(tmp_path, capsys, backend):
    pytest.importorskip(backend)
    out = tmp_path / "run"
    args = [*TINY, "--data", str(make_corpus(tmp_path / "corpus")), "--steps", "1"]
    code = cli.main([*args, "--backend", backend, "--context-parallel", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--context-parallel 2" in err, err
    assert not out.exists()
