"""Child process of tests/test_import_order.py: runs its arguments as Python statements, in
order, then a tiny FLASH forward in every flashcore backend that is now imported, each checked
against the NumPy spec; ``--compile`` also runs a torch.compile'd flashcore.torch module, and
``--no-triton`` then checks that nothing imported triton.

Run as a script (``python tests/_import_order_child.py "import keras" "import flashcore.tf"``),
never imported by pytest: it must see the import order its arguments give and nothing else (no
conftest). The last line it prints is ``ok <backend> ...`` for the backends it ran.
"""

from __future__ import annotations

import sys


def _forward(backend: str, params, x, cfg):
    """(1, 40, 16) float32 through one FLASH layer of ``backend``, as a NumPy array."""
    import numpy as np

    if backend == "torch":
        import torch

        import flashcore.torch

        m = flashcore.torch.FLASH(cfg)
        m.load_canonical(params)
        with torch.no_grad():
            return m(torch.from_numpy(x)).numpy()
    if backend == "jax":
        import jax.numpy as jnp

        import flashcore.jax

        return np.asarray(flashcore.jax.FLASH(cfg, params=params)(jnp.asarray(x)))
    import flashcore.tf

    return np.asarray(flashcore.tf.FLASH(cfg, params=params)(x))


def _compiled_forward(params, x, cfg):
    import torch

    import flashcore.torch

    m = flashcore.torch.FLASH(cfg)
    m.load_canonical(params)
    with torch.no_grad():
        return torch.compile(m)(torch.from_numpy(x)).numpy()


def main(argv: list[str]) -> None:
    compile_, no_triton = "--compile" in argv, "--no-triton" in argv
    namespace: dict = {}
    for statement in (a for a in argv if not a.startswith("--")):
        exec(statement, namespace)  # the import order under test, exactly as a user writes it

    import numpy as np

    import flashcore as fc
    from flashcore.conformance.assertions import assert_close

    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=16, causal=True)
    params = fc.init(cfg, seed=0)
    x = np.random.default_rng(0).normal(size=(1, 40, 16)).astype(np.float32)
    want = fc.flash(params, x, config=cfg)
    ran = []
    for backend in ("torch", "jax", "tf"):
        if f"flashcore.{backend}" in sys.modules:
            assert_close(_forward(backend, params, x, cfg), want, err_msg=backend)
            ran.append(backend)
    if compile_:
        assert_close(_compiled_forward(params, x, cfg), want, err_msg="torch.compile")
        ran.append("torch.compile")
    if no_triton:
        loaded = [m for m in sys.modules if m.split(".")[0] == "triton"]
        assert not loaded, f"triton was imported: {loaded[:5]}"
    print("ok", *ran)


if __name__ == "__main__":
    main(sys.argv[1:])
