"""The modules and functions one ``flashcore.flash`` call passes through (NumPy, float64).

    FLASHCORE_ROOT=. python tests/_flash_trace.py        # prints "<modules> modules, <functions> functions"

Traced with :func:`sys.setprofile` over one call after a warm-up call (so that imports and caches
do not count); only flashcore's own Python functions are counted (NumPy and array-api-compat are
not), each distinct (module, function) once.
"""

from __future__ import annotations

import sys

import numpy as np


def trace(verbose: bool = False) -> tuple[int, int]:
    """(modules, functions) of flashcore entered by one ``flashcore.flash`` call."""
    import flashcore as fc

    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True)
    params = fc.init(cfg, seed=0)
    x = np.random.default_rng(0).normal(size=(1, 12, 16))
    fc.flash(params, x, config=cfg)  # warm-up
    seen: set[tuple[str, str]] = set()

    def prof(frame, event, _arg):
        if event == "call":
            mod = frame.f_globals.get("__name__", "")
            if mod.startswith("flashcore"):
                seen.add((mod, frame.f_code.co_name))

    sys.setprofile(prof)
    try:
        fc.flash(params, x, config=cfg)
    finally:
        sys.setprofile(None)
    if verbose:
        for mod, fn in sorted(seen):
            print(f"  {mod}.{fn}")
    return len({m for m, _ in seen}), len(seen)


if __name__ == "__main__":
    modules, functions = trace(verbose="-v" in sys.argv)
    print(f"{modules} modules, {functions} functions")
