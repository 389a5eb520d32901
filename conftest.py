"""Repository-wide pytest options: which conformance backends to run."""


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        help="conformance backend(s) to run: numpy, array_api_strict, torch, jax, tf or "
        "module:Class (repeat or comma-separate; default: all built-in; env FLASHCORE_BACKENDS)",
    )


# In one process, triton (and torch.compile, which loads it) must come before TensorFlow, or LLVM
# aborts on an option registered twice. The suite loads every backend, so settle the order here.
try:
    import torch  # noqa: F401
    import triton  # noqa: F401
except ImportError:
    pass
