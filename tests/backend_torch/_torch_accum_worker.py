"""Run under torchrun by test_torch_train_accum_ddp.py: ``flashcore train ARGS`` with DDP's
``no_sync`` counted; fails unless every step but its last micro-batch ran under it.

    python -m torch.distributed.run --standalone --nproc_per_node=2 _torch_accum_worker.py train ...
"""

from __future__ import annotations

import sys

from torch.nn.parallel import DistributedDataParallel

from flashcore.app import cli

deferred: list[int] = []
_no_sync = DistributedDataParallel.no_sync


def _counting(self):
    deferred.append(1)
    return _no_sync(self)


if __name__ == "__main__":
    DistributedDataParallel.no_sync = _counting
    argv = sys.argv[1:]
    code = cli.main(argv)
    steps, accum = (int(argv[argv.index(flag) + 1]) for flag in ("--steps", "--grad-accum"))
    assert len(deferred) == steps * (accum - 1), (len(deferred), steps, accum)
    sys.exit(code)
