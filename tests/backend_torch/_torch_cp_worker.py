"""Run by test_torch_context_parallel.py in a subprocess: context-parallel FLASH on 2 CPU ranks
(gloo), each holding half of every sequence; rank 0 saves the gathered outputs, input gradients,
summed parameter gradients and the bytes each rank passed through the collectives.

    python _torch_cp_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashcore as fc
from flashcore.torch import FLASH
from flashcore.torch.context_parallel import CommStats, context_parallel_flash

WORLD = 2
SHARD = 8  # positions per rank: 2 chunks of 4


def _config(**kw) -> fc.FlashConfig:
    return fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, **kw)


# name -> (config, masked)
CASES = {
    "causal_shift_sum": (_config(causal=True, token_shift=True), False),
    "causal_mean": (_config(causal=True, linear_norm="mean"), False),
    "causal_shift_mask": (_config(causal=True, token_shift=True, rel_bias="t5"), True),
    "noncausal_shift_sum": (_config(causal=False, token_shift=True), False),
    "noncausal_mean_mask": (_config(causal=False, linear_norm="mean", rope="interleaved"), True),
    "noncausal_length": (_config(causal=False, linear_norm="length", token_shift=True), False),
}
BYTES_CASE = "causal_shift_sum"  # also run at 4x the length, to count bytes


def problem(name: str, shard: int = SHARD):
    """config, x (2, WORLD * shard, 16), mask (or None) and the output cotangent w for a case."""
    config, masked = CASES[name]
    g = torch.Generator().manual_seed(0)
    t = WORLD * shard
    x = torch.randn(2, t, config.dim, generator=g)
    w = torch.randn(2, t, config.dim, generator=g)
    mask = None
    if masked:
        mask = torch.rand(2, t, generator=g) > 0.3
        mask[0, shard - 1] = False  # the token shift's halo row is padding
    return config, x, mask, w


def make_layer(config: fc.FlashConfig) -> FLASH:
    """The layer, with q / k scale-offsets and relative bias far from their init (gamma ~ 0.02
    would leave the attention a 1e-4 part of the output, next to the residual)."""
    params = fc.init(config, seed=0)
    rng = np.random.default_rng(1)
    for name in ("qk.gamma", "qk.beta", "rel_bias.weight"):
        params[name] = params[name] + rng.normal(size=params[name].shape).astype(np.float32)
    layer = FLASH(config, init=False)
    layer.load_canonical(params)
    return layer


def _gather(a: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(a) for _ in range(WORLD)]
    dist.all_gather(parts, a.contiguous())
    return torch.cat(parts, dim=1)


def _run(name: str, rank: int, shard: int) -> dict:
    config, x, mask, w = problem(name, shard)
    layer = make_layer(config)
    rows = slice(rank * shard, (rank + 1) * shard)
    x_mine = x[:, rows].clone().requires_grad_(True)
    stats = CommStats()
    y = context_parallel_flash(
        layer, x_mine, mask=None if mask is None else mask[:, rows], stats=stats
    )
    forward_sent = stats.sent
    (y * w[:, rows]).sum().backward()
    grads = {}
    for n, p in layer.named_parameters():
        dist.all_reduce(p.grad)
        grads[n] = p.grad
    return {
        "y": _gather(y.detach()),
        "x_grad": _gather(x_mine.grad),
        "grads": grads,
        "forward_sent": forward_sent,
        "sent": stats.sent,
        "calls": stats.calls,
    }


def _rank(rank: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        results = {name: _run(name, rank, SHARD) for name in CASES}
        results["long"] = _run(BYTES_CASE, rank, 4 * SHARD)
        if rank == 0:
            torch.save(results, Path(out_dir) / "results.pt")
        dist.barrier()  # tear gloo down together (see flashcore.torch.parallel.leave)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_rank, args=(sys.argv[1],), nprocs=WORLD, join=True)
