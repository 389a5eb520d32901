"""Repository-wide pytest options: which conformance backends to run."""


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        help="conformance backend(s) to run: numpy, array_api_strict, torch, jax, tf or "
        "module:Class (repeat or comma-separate; default: all built-in; env FLASHCORE_BACKENDS)",
    )
