"""``python -m flashcore ...``: the ``flashcore`` command, also for launchers that take a module
(``torchrun --nproc_per_node=2 -m flashcore train ...``)."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
