"""One writer per run folder: ``RUN/.lock``.

    with RunLock(run) as lock:      # RunLocked when a live process holds it
        print(lock.note)            # "" or what was taken over (a stale lock of a dead process)

The lock file is created with O_EXCL and holds JSON {"pid", "host", "start", "command"}
(``start``: the process's start time from /proc where there is one, so that a recycled pid is not
taken for the old process). It is removed on release; a process killed with SIGKILL leaves it
behind, and the next writer on the same host finds its pid dead and takes it over, saying so. A
lock from another host cannot be checked: the error says to remove it by hand if that run is over.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

__all__ = ["RunLock", "RunLocked", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live process is writing this run folder."""


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()[19]  # field 22 of stat; the name may hold spaces


def _alive(info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    start = info.get("start")
    return start is None or _start_time(pid) in (None, start)


class RunLock:
    """The lock of one run folder (see the module docstring)."""

    def __init__(self, run: Path, command: str = "flashcore train"):
        self.path = Path(run) / LOCK_NAME
        self.command = command
        self.held = False
        self.note = ""

    def _create(self) -> bool:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_time(os.getpid()),
            "command": self.command,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            self.held = True
            return self
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}  # being written this instant, or garbage: treated as held below
        host = info.get("host")
        if info and host == socket.gethostname() and not _alive(info):
            self.note = (
                f"{self.path.parent}: taking over the lock of process {info.get('pid')}, "
                "which is no longer running (it was interrupted)"
            )
            self.path.unlink(missing_ok=True)
            if self._create():
                self.held = True
                return self
        who = f"process {info.get('pid', '?')}" + (
            f" on {host}" if host and host != socket.gethostname() else ""
        )
        raise RunLocked(
            f"{self.path.parent} is in use by {who} ({info.get('command', 'another writer')}); "
            f"wait for it to finish, or if it is gone, remove {self.path}"
        )

    def release(self) -> None:
        if self.held:
            self.held = False
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
