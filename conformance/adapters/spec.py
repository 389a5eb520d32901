"""Built-in adapters that run the spec itself: on NumPy and on array-api-strict.

Neither library has autodiff, so these adapters check outputs and losses and report gradients as
skipped (the golden gradients are checked against finite differences of the NumPy spec in
tests/test_golden.py).
"""

from __future__ import annotations

import numpy as np

from .. import golden
from .base import Adapter, Result

NO_AUTODIFF = (
    "{lib} has no autodiff; gradients are checked by finite differences in tests/test_golden.py"
)


class NumpyAdapter(Adapter):
    name = "numpy"
    dtypes = ("float64", "float32")
    autodiff = False

    def run(self, config, params, inputs, dtype):
        dt = np.dtype(dtype)
        p = {k: v.astype(dt) for k, v in params.items()}
        i = {k: (v.astype(dt) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
        out = golden.spec_output(config, p, i)
        loss = golden.spec_loss(config, p, i)
        return Result(
            np.asarray(out, np.float64), float(loss), None, NO_AUTODIFF.format(lib="NumPy")
        )


class StrictAdapter(Adapter):
    name = "array_api_strict"
    dtypes = ("float64", "float32")
    autodiff = False

    def unavailable(self):
        try:
            import array_api_strict  # noqa: F401
        except ImportError as err:
            return f"array-api-strict is not installed ({err})"
        return None

    def run(self, config, params, inputs, dtype):
        import array_api_strict as xp

        dt = getattr(xp, dtype)
        conv = lambda a: xp.asarray(a, dtype=dt) if a.dtype.kind == "f" else xp.asarray(a)  # noqa: E731
        p = {k: conv(v) for k, v in params.items()}
        i = {k: conv(v) for k, v in inputs.items()}
        out = np.from_dlpack(golden.spec_output(config, p, i, xp=xp)).astype(np.float64)
        loss = float(np.from_dlpack(golden.spec_loss(config, p, i, xp=xp)))
        return Result(out, loss, None, NO_AUTODIFF.format(lib="array-api-strict"))
