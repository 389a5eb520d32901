"""Run under torchrun by test_torch_train_ddp.py: ``flashcore train ARGS`` with the DDP-wrapped
loss recording the rows each rank trains on; fails if a rank saw anything but its share.

    python -m torch.distributed.run --standalone --nproc_per_node=2 _torch_train_ddp_worker.py train ...
"""

from __future__ import annotations

import os
import sys

from flashcore.app import cli
from flashcore.torch import engine

seen: list[tuple[int, ...]] = []
_forward = engine._Loss.forward


def _recording(self, tokens, targets, loss_mask=None):
    seen.append(tuple(tokens.shape))  # (b / world, t)
    return _forward(self, tokens, targets, loss_mask=loss_mask)


if __name__ == "__main__":
    engine._Loss.forward = _recording
    argv = sys.argv[1:]
    code = cli.main(argv)
    share = int(argv[argv.index("--batch") + 1]) // int(os.environ["WORLD_SIZE"])
    assert seen and all(shape[0] == share for shape in seen), (share, seen)
    sys.exit(code)
