"""Run under torchrun by test_torch_train_scale.py: ``flashcore train ARGS`` recording what each
rank holds and sees; fails if a sharded rank holds more than its share of the parameters and AdamW
state, or a context-parallel rank trained on anything but its (rows, positions) of each batch.

    python -m torch.distributed.run --standalone --nproc_per_node=2 _torch_train_scale_worker.py train ...
"""

from __future__ import annotations

import os
import sys

from flashcore.app import cli
from flashcore.torch import engine, shard

held: list[dict[str, int]] = []
seen: list[tuple[int, ...]] = []
_close = engine.Engine.close
_local_loss = shard.ContextParallel.local_loss


def _closing(self):
    held.append(shard.local_bytes(self.model, self.optimizer))
    _close(self)


def _recording(self, lm, x, y, mask=None):
    seen.append(tuple(x.shape))  # (b, T / context)
    return _local_loss(self, lm, x, y, mask)


if __name__ == "__main__":
    engine.Engine.close = _closing
    shard.ContextParallel.local_loss = _recording
    argv = sys.argv[1:]
    code = cli.main(argv)
    world = int(os.environ["WORLD_SIZE"])
    if "--shard" in argv:  # the parameters and both moments: 1/world each (a few rows more)
        (b,) = held
        for key in ("params", "optimizer"):
            assert 0 < b[key] <= b[f"{key}_whole"] / world * 1.05, (key, b)
    if "--context-parallel" in argv:
        t = int(argv[argv.index("--context") + 1]) // world
        assert seen and all(
            shape == (int(argv[argv.index("--batch") + 1]), t) for shape in seen[:1]
        )
        assert all(shape[1] == t for shape in seen), (t, seen)
    print(f"rank {os.environ['RANK']}: held {held}, context shapes {sorted(set(seen))}")
    sys.exit(code)
