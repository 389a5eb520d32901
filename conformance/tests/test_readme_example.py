"""The worked adapter example in conformance/README.md runs as written against a toy port."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from flashcore.conformance import report

README = Path(__file__).resolve().parents[1] / "README.md"

TOY_PORT = """
import flashcore as fc

def flash(w, x, chunk_size, causal):
    d, s = w["hidden.kernel"].shape[0], w["qk.gamma"].shape[1]
    e = w["out.kernel"].shape[0]
    cfg = fc.FlashConfig(dim=d, qk_dim=s, expansion=e / d, chunk_size=chunk_size, causal=causal,
                         max_len=32, t5_buckets=8, t5_max_distance=16)
    return fc.flash(w, x, config=cfg)
"""


def test_readme_adapter_example(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(# my_adapter.py.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "my_adapter.py").write_text(block)
    (tmp_path / "my_port.py").write_text(TOY_PORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("my_adapter", "my_port"):
        sys.modules.pop(mod, None)
    rc = report.main(["--backend", "my_adapter:MyPortAdapter", "--case", "flash-*-T*"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "pass" in out
    # and a case it cannot run fails with the adapter's own reason
    rc = report.main(["--backend", "my_adapter:MyPortAdapter", "--case", "gau-bidir-T=1"])
    out = capsys.readouterr().out
    assert rc == 1 and "only has an unpacked FLASH layer" in out
