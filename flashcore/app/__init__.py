"""The application storey: the ``flashcore`` command and what it runs (training with crash-safe run
folders, evaluation, generation, quality, the demo, weight conversion and export, benchmark tables,
progress bars, quiet start-up, the engine loader).

It sits above the spec (``flashcore``) and the backends (``flashcore.torch`` / ``.jax`` / ``.tf``)
and may import both; neither imports it (``tests/test_layers_of_the_house.py`` checks).
"""
