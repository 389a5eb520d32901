"""Measurements in child processes, for ``flashcore bench``: every measurement runs in a fresh
``python -m <module> --child JSON`` so that its peak memory is its own high-water mark and one
model's allocations do not slow the next. The child prints one line ``<mark> {json}``.

    env = child_env(system_malloc=False)
    result = run_child("flashcore.torch.bench", {"kind": "matmul", ...}, env, timeout=60.0)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

__all__ = ["MALLOC_ENV", "child_env", "run_child"]

# Large CPU allocations are mmap'd and page-faulted on every step by default; keeping freed
# memory in the heap (no mmap, no trim) saves that for every model alike.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def child_env(*, system_malloc: bool) -> dict[str, str]:
    """This process's environment for the children, with :data:`MALLOC_ENV` unless
    ``system_malloc``, and unbuffered output."""
    env = dict(os.environ)
    if not system_malloc:
        env.update(MALLOC_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(
    module: str, job: dict, env: dict, timeout: float, *, mark: str = "BENCH_RESULT "
) -> dict:
    """Run ``python -m module --child JSON(job)``; its result dict (the last ``mark`` line of its
    stdout), or {"error": why} when it timed out, failed or printed no result."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(mark):
            return json.loads(line[len(mark) :])
    return {"error": f"child failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}
