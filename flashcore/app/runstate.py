"""The run folder of ``flashcore train`` and its checkpoints: the format, the save, the look-up.

    RUN/
      run.json                      the run's arguments: {"format": "flashcore-run",
                                    "format_version": 1, "args": {...}}, written when it starts
      log.jsonl                     one JSON record per logged step and per evaluation
      tb/                           the same scalars as TensorBoard events (flashcore.app.tblog)
      tokenizer.json                a copy of the run's tokenizer (runs with one): what
                                    ``flashcore eval / generate`` encode and decode with
      model.safetensors             the newest checkpoint's weights (a hard link, else a copy):
                                    what ``flashcore eval / generate / convert`` read
      ckpt/step-000400/             one checkpoint, published whole by renaming its folder
          model.safetensors         canonical weights and config (flashcore.io); metadata step,
                                    corpus, corpus_sha256, data_kind (bytes, tokens, text),
                                    tokenizer_sha256 (runs with a tokenizer), train_loss
          train_state.safetensors   AdamW moments (canonical layout) and "step"; metadata format
                                    "flashcore-train-state", step, rng (the sampler), args
          manifest.json             {"format": "flashcore-checkpoint", "format_version": 1,
                                    "step": 400, "files": {name: {"size", "sha256"}}}
      .lock                         the process writing the run (flashcore.app.runlock)

:func:`save_checkpoint` writes ``ckpt/.step-000400.partial/``: each file written and fsynced, the
manifest last, the folder fsynced, then renamed to ``step-000400`` and ``ckpt/`` fsynced. Only
then is ``RUN/model.safetensors`` replaced (a link made under a temporary name, then renamed over)
and the checkpoints older than the newest ``keep`` removed (each renamed to ``.trash-...`` first).
A crash at any moment leaves the previous checkpoint whole; :func:`latest` never returns a
partial folder, nor one whose files disagree with its manifest, and says which it passed over.

Crash points, for the tests: with ``FLASHCORE_CRASH_AT=NAME`` (or ``NAME@K``: the K-th time) in
the environment the process SIGKILLs itself at that point of the save; :data:`CRASH_POINTS`
lists them in the order they are reached. Errors name the file and the problem
(:class:`RunStateError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..config import LMConfig

__all__ = [
    "RUN_FORMAT",
    "CHECKPOINT_FORMAT",
    "STATE_FORMAT",
    "FORMAT_VERSION",
    "CRASH_POINTS",
    "RunStateError",
    "RunState",
    "Checkpoint",
    "RUN_FILES",
    "EVENTS_DIR",
    "TOKENIZER",
    "copy_tokenizer",
    "holds_run",
    "write_run_info",
    "read_run_info",
    "save_checkpoint",
    "checkpoints",
    "latest",
    "load_checkpoint",
    "publish_model",
    "clean_partials",
    "trim_log",
    "remove_run",
    "crash_point",
    "fsync_file",
    "fsync_dir",
    "file_sha256",
]

RUN_FORMAT = "flashcore-run"
CHECKPOINT_FORMAT = "flashcore-checkpoint"
STATE_FORMAT = "flashcore-train-state"
FORMAT_VERSION = 1

CRASH_POINTS = (
    "save-begin",  # the partial folder exists, empty
    "save-model",  # model.safetensors written and fsynced
    "save-state",  # train_state.safetensors written and fsynced
    "save-manifest",  # manifest.json written; the folder not yet renamed
    "save-published",  # the folder renamed into place and ckpt/ fsynced
    "save-link",  # RUN/model.safetensors' replacement made under a temporary name
    "save-linked",  # RUN/model.safetensors replaced; old checkpoints not yet removed
    "save-prune",  # an old checkpoint renamed to .trash-..., not yet deleted
    "save-done",  # the save finished
)

TOKENIZER = "tokenizer.json"
#: TensorBoard events of the run (:mod:`flashcore.app.tblog`)
EVENTS_DIR = "tb"

RUN_FILES = (
    "run.json", "log.jsonl", "model.safetensors", "train_state.safetensors", "ckpt", TOKENIZER,
    EVENTS_DIR,
)  # fmt: skip

_STEP_DIR = re.compile(r"^step-(\d+)$")
_reached: Counter = Counter()


class RunStateError(io.WeightFileError):
    """A run folder or checkpoint that cannot be used; the message names the file."""


@dataclass
class RunState:
    """What a checkpoint holds beside the weights and moments: the step done, the data
    sampler's state (a NumPy bit-generator state) and the run's arguments."""

    step: int
    rng_state: dict
    args: dict


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder (``legacy``: a run folder of the older flat layout)."""

    path: Path
    step: int
    legacy: bool = False

    @property
    def model(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "train_state.safetensors"


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``FLASHCORE_CRASH_AT`` names this point (tests only)."""
    want = os.environ.get("FLASHCORE_CRASH_AT")
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- durable writes --------------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames into it) to disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open folders (Windows): renames are durable there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_fsync_file, _fsync_dir = fsync_file, fsync_dir


def _write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically and durably."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    io.atomic_write(path, write)
    _fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the run folder --------------------------------------------------------------------------


def holds_run(folder: Path) -> list[str]:
    """The run files present in ``folder`` (empty: no run there)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def write_run_info(run: Path, args: dict) -> None:
    """``RUN/run.json``: the arguments the run started with."""
    _write_json(
        run / "run.json", {"format": RUN_FORMAT, "format_version": FORMAT_VERSION, "args": args}
    )


def copy_tokenizer(run: Path, src: Path) -> Path:
    """``RUN/tokenizer.json``: a copy of ``src``, written atomically and durably."""

    def write(tmp: str) -> None:
        shutil.copyfile(src, tmp)
        _fsync_file(Path(tmp))

    dst = run / TOKENIZER
    io.atomic_write(dst, write)
    _fsync_dir(run)
    return dst


def _check_version(path: Path, data: dict, fmt: str) -> None:
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise RunStateError(f"{path}: not a {fmt} file")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise RunStateError(f"{path}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise RunStateError(
            f"{path}: written in {fmt} format version {version}, newer than this flashcore "
            f"reads ({FORMAT_VERSION}); upgrade flashcore"
        )


def _read_json(path: Path, fmt: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise RunStateError(f"{path}: unreadable (truncated or corrupt?): {err}") from err
    _check_version(path, data, fmt)
    return data


def read_run_info(run: Path) -> dict:
    """The arguments in ``RUN/run.json`` (FileNotFoundError when absent)."""
    path = run / "run.json"
    data = _read_json(path, RUN_FORMAT)
    if not isinstance(data.get("args"), dict):
        raise RunStateError(f"{path}: no arguments stored")
    return data["args"]


# -- saving ----------------------------------------------------------------------------------


def _step_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    run: Path,
    params: dict[str, np.ndarray],
    opt: dict[str, np.ndarray],
    config: LMConfig,
    state: RunState,
    *,
    model_meta: dict[str, str],
    keep: int,
) -> Checkpoint:
    """Write one checkpoint of ``run`` as a unit (see the module docstring), point
    ``RUN/model.safetensors`` at it, and keep the newest ``keep`` checkpoints."""
    from safetensors.numpy import save_file

    root = run / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_name(state.step)
    partial = root / f".{final.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    crash_point("save-begin")
    io.save(
        partial / "model.safetensors", params, config, extra={"step": str(state.step), **model_meta}
    )
    _fsync_file(partial / "model.safetensors")
    crash_point("save-model")
    opt = {k: np.asarray(v).copy(order="C") for k, v in opt.items()}
    smeta = {
        "format": STATE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "step": str(state.step),
        "rng": json.dumps(state.rng_state),
        "args": json.dumps(state.args),
    }
    save_file(opt, str(partial / "train_state.safetensors"), metadata=smeta)
    _fsync_file(partial / "train_state.safetensors")
    crash_point("save-state")
    files = {}
    for name in ("model.safetensors", "train_state.safetensors"):
        p = partial / name
        files[name] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "step": state.step,
        "files": files,
    }
    _write_json(partial / "manifest.json", manifest)
    crash_point("save-manifest")
    if final.exists():  # the same step saved again (a resumed run that re-ran it): replace it
        trash = root / f".trash-{final.name}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(partial, final)
    _fsync_dir(root)
    crash_point("save-published")
    ckpt = Checkpoint(final, state.step)
    publish_model(run, ckpt)
    for old in checkpoints(run)[:-keep]:
        trash = root / f".trash-{old.path.name}"
        os.replace(old.path, trash)
        crash_point("save-prune")
        shutil.rmtree(trash)
    _fsync_dir(root)
    crash_point("save-done")
    return ckpt


def publish_model(run: Path, ckpt: Checkpoint) -> None:
    """Replace ``RUN/model.safetensors`` by ``ckpt``'s (a hard link, else a copy) in one rename."""
    dst = run / "model.safetensors"
    if ckpt.legacy or (dst.exists() and os.path.samefile(dst, ckpt.model)):
        return
    tmp = run / f".model.safetensors.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(ckpt.model, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(ckpt.model, tmp)
        _fsync_file(tmp)
    crash_point("save-link")
    os.replace(tmp, dst)
    _fsync_dir(run)
    crash_point("save-linked")


# -- reading ---------------------------------------------------------------------------------


def _verify(folder: Path, *, hashes: bool) -> str | None:
    """None when ``folder`` is a complete checkpoint; else why not."""
    path = folder / "manifest.json"
    if not path.is_file():
        return "no manifest.json (an incomplete save)"
    try:
        manifest = _read_json(path, CHECKPOINT_FORMAT)
    except RunStateError as err:
        return str(err)
    for name, want in manifest.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want.get("size"):
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want.get('size')}"
        if hashes and file_sha256(p) != want.get("sha256"):
            return f"{name} does not match the manifest's sha256 (corrupt)"
    if set(manifest.get("files", {})) != {"model.safetensors", "train_state.safetensors"}:
        return "the manifest does not list model.safetensors and train_state.safetensors"
    return None


def checkpoints(
    run: Path, *, hashes: bool = False, notes: list[str] | None = None
) -> list[Checkpoint]:
    """The complete checkpoints of ``run``, oldest first; ``notes`` gets a line for every folder
    passed over (partial, or disagreeing with its manifest)."""
    root = run / "ckpt"
    found = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        match = _STEP_DIR.match(entry.name)
        if not match:
            if notes is not None and entry.name.startswith("."):
                notes.append(f"ignoring {entry} (left by an interrupted save)")
            continue
        why = _verify(entry, hashes=hashes)
        if why is not None:
            if notes is not None:
                notes.append(f"ignoring {entry}: {why}")
            continue
        found.append(Checkpoint(entry, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(run: Path, *, hashes: bool = True, notes: list[str] | None = None) -> Checkpoint | None:
    """The newest complete checkpoint of ``run`` (None: none yet). A run folder of the older
    flat layout (model and train_state at the top, no ckpt/) counts as one ``legacy`` checkpoint."""
    found = checkpoints(run, hashes=False, notes=notes)
    while found:  # the cheap checks first; the hashes of the newest only, then the next
        newest = found.pop()
        why = _verify(newest.path, hashes=hashes)
        if why is None:
            return newest
        if notes is not None:
            notes.append(f"ignoring {newest.path}: {why}")
    if not (run / "ckpt").exists() and (run / "train_state.safetensors").is_file():
        step = io.read_header(run / "model.safetensors").get("step", "0")
        return Checkpoint(run, int(step), legacy=True)
    return None


def load_checkpoint(ckpt: Checkpoint) -> tuple[dict, LMConfig, dict, RunState]:
    """-> params, config, optimizer state, run state. Errors name the file and the problem."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    params, config = io.load(ckpt.model)
    if not isinstance(config, LMConfig):
        raise RunStateError(f"{ckpt.model}: holds a single layer, not a language model")
    path = ckpt.state
    if not path.is_file():
        raise RunStateError(f"{path}: missing; cannot resume without the optimizer state")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        opt = load_file(str(path))
    except Exception as err:
        raise RunStateError(f"{path}: unreadable (truncated or corrupt?): {err}") from err
    if meta.get("format") != STATE_FORMAT:
        raise RunStateError(f"{path}: not a flashcore training state")
    version = meta.get("format_version", "0")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise RunStateError(
            f"{path}: format version {version!r}; this flashcore reads up to {FORMAT_VERSION}"
        )
    model_step = io.read_header(ckpt.model).get("step")
    if model_step != meta.get("step"):
        raise RunStateError(
            f"{ckpt.path}: model.safetensors is at step {model_step} but train_state.safetensors "
            f"at step {meta.get('step')} (a save was interrupted); resume from a consistent copy"
        )
    try:
        state = RunState(int(meta["step"]), json.loads(meta["rng"]), json.loads(meta["args"]))
    except (KeyError, ValueError) as err:
        raise RunStateError(f"{path}: the run state in its metadata is unusable: {err}") from err
    return params, config, opt, state


# -- repairs after a crash -------------------------------------------------------------------


def clean_partials(run: Path) -> list[str]:
    """Remove what interrupted saves left (partial folders, trash, temporary links) -> notes.
    Only the process holding the run's lock may call it."""
    notes = []
    root = run / "ckpt"
    leftovers = [p for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []
    leftovers += [p for p in run.glob(".model.safetensors.*")]
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        notes.append(f"removed {p} (left by an interrupted save)")
    return notes


def trim_log(run: Path, step: int) -> int:
    """Drop the records of ``RUN/log.jsonl`` after ``step`` (and a line cut short by a crash),
    atomically -> how many were dropped."""
    path = run / "log.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            ok = int(rec["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())

        io.atomic_write(path, write)
        _fsync_dir(run)
    return dropped


def remove_run(run: Path) -> None:
    """Delete the run files of ``run`` (``--force``); other files in the folder stay."""
    for name in RUN_FILES:
        p = run / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
