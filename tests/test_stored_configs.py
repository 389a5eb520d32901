"""Every config the repository stores or writes loads under FlashConfig's per-kind checks, and
round-trips to byte-identical JSON: the conformance goldens (npz ``config``), any config dict in a
tracked JSON file or safetensors header, the configs of the conformance grid and tests/_cases.py,
``flashcore train``'s configs, the Hugging Face config, and the GAU-alpha and flash-pytorch
importers' configs. A value only the other kind reads raises, naming the field and both kinds."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import flashcore as fc
from flashcore.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
TYPES = {"FlashConfig", "TransformerConfig", "LMConfig"}


def _tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *(f"*{s}" for s in suffixes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [ROOT / line for line in out.stdout.split()]


def _config_dicts(obj, where: str):
    """(where, dict) for each config dict inside a JSON value (strings holding JSON included)."""
    if isinstance(obj, dict):
        if obj.get("type") in TYPES:
            yield where, obj
            return
        for key, value in obj.items():
            yield from _config_dicts(value, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _config_dicts(value, f"{where}[{i}]")
    elif isinstance(obj, str) and obj.startswith("{") and '"type"' in obj:
        try:
            yield from _config_dicts(json.loads(obj), where)
        except json.JSONDecodeError:
            pass


def _stored() -> dict[str, str]:
    """{where: the stored JSON text} of every config the repository holds in a data file."""
    found: dict[str, str] = {}
    for path in _tracked(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if "config" in data.files:
                found[str(path.relative_to(ROOT))] = str(data["config"])
    for path in _tracked(".json"):
        for where, cfg in _config_dicts(json.loads(path.read_text()), str(path.relative_to(ROOT))):
            found[where] = json.dumps(cfg, sort_keys=True)
    for path in _tracked(".safetensors"):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__", {})
        for where, cfg in _config_dicts(meta, str(path.relative_to(ROOT))):
            found[where] = json.dumps(cfg, sort_keys=True)
    return found


STORED = _stored()


def _round_trip(text: str) -> str:
    return json.dumps(config_from_dict(json.loads(text)).to_dict(), sort_keys=True)


def _completed(data: dict) -> dict:
    """A stored config dict with the fields added after it was written, at the values
    :func:`config_from_dict` documents for them (FlashConfig.init: 'paper'; others: defaults)."""
    cls = {c.__name__: c for c in (fc.FlashConfig, fc.TransformerConfig, fc.LMConfig)}[data["type"]]
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out and f.name != "block":
            out[f.name] = "paper" if (cls, f.name) == (fc.FlashConfig, "init") else f.default
    if isinstance(out.get("block"), dict):
        out["block"] = _completed(out["block"])
    return out


def test_the_repository_stores_configs_of_both_kinds():
    kinds = {json.loads(t).get("kind") for t in STORED.values()}
    assert len(STORED) > 100 and {"flash", "gau"} <= kinds


@pytest.mark.parametrize("where", sorted(STORED))
def test_a_stored_config_loads_and_round_trips_byte_identical(where):
    """Every stored field comes back byte-identical (a field newer than the file is added at its
    documented value), and the result round-trips unchanged."""
    text = _round_trip(STORED[where])
    assert text == json.dumps(_completed(json.loads(STORED[where])), sort_keys=True)
    assert _round_trip(text) == text


def _peer_state(gau: bool, d: int = 8, e: int = 16, s: int = 4) -> dict[str, np.ndarray]:
    """A flash-pytorch FLASH or GAU layer's state dict (zeros: the importer reads shapes only)."""
    out = "to_out.0." if gau else "to_out."
    rows = 2 if gau else 4
    scale = "offsetscale." if gau else "qk_offset_scale."
    shapes = {
        "norm.g": (1,),
        "to_hidden.0.weight": (2 * e, d),
        "to_hidden.0.bias": (2 * e,),
        "to_qk.0.weight": (s, d),
        "to_qk.0.bias": (s,),
        scale + "gamma": (rows, s),
        scale + "beta": (rows, s),
        "rel_pos_bias.relative_attention_bias.weight": (32, 1),
        out + "weight": (d, e),
        out + "bias": (d,),
    }
    return {k: np.zeros(v, np.float32) for k, v in shapes.items()}


def _written() -> dict[str, object]:
    """{where: config} of the configs code in the repository writes."""
    from conformance.cases import CASES
    from flashcore.app.train import build_config, train_parser
    from flashcore.peers import flash_pytorch, gau_alpha
    from tests._cases import ALL_CONFIGS

    found: dict[str, object] = {f"tests/_cases.py:{k}": c for k, c in ALL_CONFIGS.items()}
    found |= {f"conformance/cases.py:{c.name}": c.config for c in CASES}
    for arch in ("flash", "gau", "transformer"):
        for objective in ("clm", "mlm"):
            args = train_parser().parse_args(["--arch", arch, "--objective", objective])
            found[f"flashcore train --arch {arch} --objective {objective}"] = build_config(args)
    found["gau_alpha.block_config"] = gau_alpha.block_config(64, 128, 32)
    for model in ("FLASH", "GAU"):
        for causal in (True, False):
            state = _peer_state(gau=model == "GAU")
            _, cfg = flash_pytorch.import_state_dict(state, model, causal=causal, group_size=4)
            found[f"flash_pytorch.import_state_dict({model}, causal={causal})"] = cfg
    return found


WRITTEN = _written()


@pytest.mark.parametrize("where", sorted(WRITTEN))
def test_a_written_config_round_trips_byte_identical(where):
    text = json.dumps(WRITTEN[where].to_dict(), sort_keys=True)
    assert _round_trip(text) == text


def test_the_hugging_face_config_carries_the_config_unchanged():
    pytest.importorskip("transformers")
    from flashcore.torch.hf import FlashcoreConfig

    lms = [FlashcoreConfig().lm_config]
    lms += [WRITTEN[k] for k in ("tests/_cases.py:lm-gau-untied", "tests/_cases.py:lm-flash")]
    for lm in lms:
        text = json.dumps(lm.to_dict(), sort_keys=True)
        saved = json.loads(FlashcoreConfig.from_lm_config(lm).to_json_string())  # config.json
        assert json.dumps(FlashcoreConfig(**saved).flashcore, sort_keys=True) == text
        assert _round_trip(text) == text


@pytest.mark.parametrize(
    "kind,field,value,owner",
    [
        ("flash", "fixed_length", 64, "gau"),
        ("flash", "length_mode", "prefix", "gau"),
        ("gau", "linear_norm", "mean", "flash"),
        ("gau", "linear_norm", "length", "flash"),
    ],
)
def test_a_value_only_the_other_kind_reads_is_refused(kind, field, value, owner):
    with pytest.raises(ValueError) as err:
        fc.FlashConfig(dim=16, qk_dim=8, kind=kind, causal=True, **{field: value})
    message = str(err.value)
    assert f"FlashConfig.{field}" in message
    assert f"kind={owner!r} only" in message and f"with kind={kind!r}" in message


@pytest.mark.parametrize(
    "kind,field,value",
    [("gau", "chunk_size", 64), ("flash", "max_len", 1024), ("flash", "length_mode", "array")],
)
def test_fields_stored_configs_set_on_the_other_kind_are_accepted(kind, field, value):
    cfg = fc.FlashConfig(dim=16, qk_dim=8, kind=kind, **{field: value})
    assert getattr(cfg, field) == value
    with pytest.raises(ValueError, match=field):  # still checked for form
        fc.FlashConfig(dim=16, qk_dim=8, kind=kind, **{field: 0 if field != "length_mode" else "x"})
