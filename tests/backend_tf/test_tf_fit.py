"""model.fit with jit_compile=True trains a tiny FLASH LM (batch size unknown at trace time)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
keras = pytest.importorskip("keras", reason="the TF backend needs keras")

import flashcore as fc  # noqa: E402
from flashcore.tf import LM  # noqa: E402


def test_fit_lowers_the_loss_of_a_tiny_lm():
    keras.utils.set_random_seed(0)
    block = fc.FlashConfig(dim=32, qk_dim=16, chunk_size=8, causal=True, token_shift=True)
    cfg = fc.LMConfig(block=block, vocab_size=16, num_layers=2)
    t = 24
    model = keras.Sequential([keras.Input((t,), dtype="int32"), LM(cfg, seed=0)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    assert model.jit_compile
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 16, (32, 1))
    seq = (starts + np.arange(t + 1) * rng.integers(1, 4, (32, 1))) % 16  # learnable sequences
    x, y = seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)
    history = model.fit(x, y, batch_size=16, epochs=8, shuffle=False, verbose=0)
    losses = history.history["loss"]  # epoch means
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.75 * losses[0], losses
