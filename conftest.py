"""Repository-wide pytest options (which conformance backends to run) and the thread share of an
xdist worker. Imports no framework: a spec-only test process stays free of torch, triton, jax and
TensorFlow. Nor does it order their imports: the tests import frameworks in whatever order they
need, as users do (tests/test_import_order.py checks the orders in fresh processes)."""

from __future__ import annotations

import os

# Under pytest-xdist (the README's test command runs ``-n 2``) each worker process gets its share
# of the cores for intra-op threads (one each on 2 cores), so that the workers keep every core busy
# without oversubscribing them. Set before any framework is imported; a value the user set stays.
# Tests that depend on a thread count set it themselves.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        help="conformance backend(s) to run: numpy, array_api_strict, torch, jax, tf or "
        "module:Class (repeat or comma-separate; default: all built-in; env FLASHCORE_BACKENDS)",
    )
