"""Interleaved A/B of the torch bench step (issue 40, target 1), by CPU time in one process.

    git apply docs/bench/2026-12-08-bf16/variants.patch   # on 7538322: the variants' flags
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    OMP_NUM_THREADS=1 taskset -c 0 python docs/bench/2026-12-08-bf16/ab.py 4096 bfloat16 15 base comp base2

A variant is 'base...' (no flag) or a comma-separated list of the patch's flags (torch_core /
torch_layer ``_EXP``; ``blkN`` sets ``torch_core.BLOCK_TOKENS = N``). Every round times one step
of each variant in a shuffled order, after one ``torch.mm`` 2048^2 for the peak; prints the
median CPU time, % of the median peak and the ratio to the first variant.
"""

import random
import statistics
import sys
import time

import torch

from flashcore.app import benchrun
from flashcore.torch.kernels import torch_core, torch_layer

t, dtype, rounds, variants = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
torch.set_num_threads(1)
job = {"backend": "torch", "model": "flashcore", "t": t, "dtype": dtype, "threads": 1}
run, _, _ = benchrun.build(job)
flops = benchrun.flops_per_token("flashcore", t) * t
n = 2048
dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)


def select(v: str) -> None:
    flags = set() if v.startswith("base") else set(v.split(","))
    for mod in (torch_core, torch_layer):
        mod._EXP.clear()
        mod._EXP.update(flags)
    torch_core.BLOCK_TOKENS = 1024
    for f in flags:
        if f.startswith("blk"):
            torch_core.BLOCK_TOKENS = int(f[3:])


res: dict[str, list[float]] = {v: [] for v in variants}
peak = []
for v in variants:
    select(v)
    run()
for r in range(rounds):
    c = time.process_time()
    torch.mm(a, b)
    peak.append(2 * n**3 / (time.process_time() - c) / 1e9)
    order = list(variants)
    random.Random(r).shuffle(order)
    for v in order:
        select(v)
        c = time.process_time()
        run()
        res[v].append(time.process_time() - c)
pk = statistics.median(peak)
print(f"T={t} {dtype} peak (mm {n}, CPU) {pk:.0f} GFLOP/s, {rounds} rounds")
base = statistics.median(res[variants[0]])
for v in variants:
    m = statistics.median(res[v])
    pct = flops / m / 1e9 / pk * 100
    print(f"  {v:30s} {m * 1e3:8.1f} ms  {pct:5.1f}% of peak  ratio {m / base:.3f}")
