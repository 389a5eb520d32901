"""Thread CPU time per statement of the fused torch layer and the chunk core in the bench step.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    OMP_NUM_THREADS=1 taskset -c 0 python docs/bench/2026-12-08-bf16/linetimer.py 4096 bfloat16 6

Writes instrumented copies of backends/torch/kernels/torch_layer.py and torch_core.py (a timer
call before every statement of the timed functions) into a temporary package that shadows the
real modules, runs the step, and prints ms per step by statement (both layers together). Needs a
clean checkout (the instrumented text is made from the files as they are).
"""

import ast
import importlib
import pathlib
import sys
import time

import torch

TIMED = {"torch_core": ("core_forward", "core_backward"), "torch_layer": ("forward", "backward")}
HEADER = """
import time as _time
_TIMES = {}
_LAST = [0.0]
_PREV = [None]


def _tick(line):
    now = _time.thread_time()
    if _PREV[0] is not None:
        _TIMES[_PREV[0]] = _TIMES.get(_PREV[0], 0.0) + now - _LAST[0]
    _PREV[0] = line
    _LAST[0] = _time.thread_time()
"""


def instrument(src: str, funcs) -> str:
    """``src`` with ``_tick(line)`` before every statement of ``funcs`` (not elif / else)."""
    lines = src.split("\n")
    ticks, starts = {}, {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name in funcs:
            starts[node.body[0].lineno] = node.body[0].col_offset
            for sub in ast.walk(node):
                if not isinstance(sub, ast.stmt) or sub is node:
                    continue
                if lines[sub.lineno - 1][: sub.col_offset].strip():
                    continue  # elif: the If starts mid-line
                if isinstance(sub, ast.Expr) and isinstance(sub.value, ast.Constant):
                    continue  # a docstring
                ticks[sub.lineno] = sub.col_offset
    out = []
    for i, line in enumerate(lines, 1):
        if i in starts:
            out.append(" " * starts[i] + "_LAST[0] = _time.thread_time(); _PREV[0] = None")
        if i in ticks:
            out.append(" " * ticks[i] + f"_tick({i})")
        out.append(line)
    text = "\n".join(out)
    future = "from __future__ import annotations\n"
    return text.replace(future, future + HEADER, 1)


def main() -> None:
    t, dtype, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    import flashcore.torch.kernels as kernels

    folder = pathlib.Path(kernels.__file__).parent
    sources = {name: (folder / f"{name}.py").read_text() for name in TIMED}
    mods = {}
    for name, funcs in TIMED.items():  # the core first: the layer imports its functions
        mod = importlib.import_module(f"flashcore.torch.kernels.{name}")
        code = compile(instrument(sources[name], funcs), str(folder / f"{name}.py"), "exec")
        exec(code, mod.__dict__)
        mods[name] = mod
    from flashcore.app import benchrun

    torch.set_num_threads(1)
    job = {"backend": "torch", "model": "flashcore", "t": t, "dtype": dtype, "threads": 1}
    run, _, _ = benchrun.build(job)
    run()
    run()
    for mod in mods.values():
        mod._TIMES.clear()
    c0 = time.process_time()
    for _ in range(reps):
        run()
    step = (time.process_time() - c0) / reps
    print(f"step {step * 1e3:.1f} ms CPU (T={t} {dtype}, {reps} steps, both layers)")
    for name, mod in mods.items():
        src = sources[name].split("\n")
        total = 0.0
        for line, sec in sorted(mod._TIMES.items()):
            ms = sec / reps * 1e3
            total += ms
            if ms >= 0.4:
                print(f"{name}:{line:<4d} {ms:7.1f} ms  {src[line - 1].strip()[:88]}")
        print(f"  {name}: {total:.1f} ms")


if __name__ == "__main__":
    main()
