"""Run by test_torch_ddp.py in a subprocess: one DistributedDataParallel step on 2 CPU ranks
(gloo), each on half of the batch; rank 0 saves the averaged gradients.

    python _torch_ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import flashcore as fc
from flashcore.torch import LM

WORLD = 2


def problem():
    """The model config and the whole batch: tokens and targets (4, 9)."""
    block = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, token_shift=True)
    config = fc.LMConfig(block=block, vocab_size=11, num_layers=2, tie_embeddings=False)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (2 * WORLD, 9), generator=g)
    targets = torch.randint(0, 11, (2 * WORLD, 9), generator=g)
    return config, tokens, targets


def _rank(rank: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD
    )
    try:
        config, tokens, targets = problem()
        lm = LM(config, seed=0, dtype=torch.float64)
        model = DistributedDataParallel(lm)
        rows = slice(rank * 2, rank * 2 + 2)
        logits = model(tokens[rows])  # (2, 9, v)
        lm.cross_entropy(logits, targets[rows]).backward()  # DDP averages over ranks
        if rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in lm.named_parameters()}
            torch.save(grads, Path(out_dir) / "grads.pt")
        dist.barrier()  # tear gloo down together (see flashcore.torch.parallel.leave)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_rank, args=(sys.argv[1],), nprocs=WORLD, join=True)
