"""Causality, exactly, by each backend's own autodiff: d out[r, i] / d x[r', j] is exactly 0 unless
r' = r, j is real, in i's segment and j <= i (or j = i), and i is real. Nonzero for j = i, and for
some earlier allowed pairs, also across chunks (a single pair may be 0: relu^2 of a negative
score), so the test can fail both ways.

Causal FLASH (token shift on and off; C = 4, T = 13: three full chunks and a partial one) and
causal GAU, float64 in every backend (JAX with x64 on for the run only). Query positions include
every chunk's first and last position. ``spec``: the spec on torch tensors, torch autodiff.
"""

import numpy as np
import pytest
from _layer_backends import BACKENDS, noisy_params, pullback, skip_reason, unsupported

import flashcore as fc

T, C, D = 13, 4, 8
QUERIES = (0, 1, 3, 4, 5, 7, 8, 11, 12)  # chunk edges: 0|3, 4|7, 8|11, 12
GRAD_BACKENDS = tuple(b for b in BACKENDS if b != "spec")  # spec: torch-spec is its autodiff

# layout -> (mask, segment ids); row 0 and row 1 differ
_MASK = np.ones((2, T), bool)
_MASK[1, 10:] = False  # right padding
_MASK[1, 6] = False  # a hole inside chunk 1
LAYOUTS = {
    "mask": (_MASK, None),
    "packed": (
        np.array([[True] * T, [True] * 11 + [False] * 2]),
        np.array([[0] * 6 + [1] * 7, [0] * 3 + [1] * 5 + [2] * 5]),  # boundaries 6 | 3, 8
    ),
}
CONFIGS = {
    "flash": dict(kind="flash"),
    "flash-shift-mean": dict(kind="flash", token_shift=True, linear_norm="mean"),
    "gau-shift": dict(kind="gau", token_shift=True),
}


def allowed(mask, seg) -> np.ndarray:
    """(b, t, t) bool from the rule alone: may out[r, i] depend on x[r, j]?"""
    seg = np.zeros(mask.shape, int) if seg is None else seg
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    same = seg[:, :, None] == seg[:, None, :]
    real = mask[:, :, None] & mask[:, None, :]
    return real & ((same & (j <= i)) | (i == j))


def _config(name: str) -> fc.FlashConfig:
    return fc.FlashConfig(dim=D, qk_dim=4, chunk_size=C, max_len=32, causal=True, **CONFIGS[name])


CASES = [
    (backend, config_name, layout)
    for backend in GRAD_BACKENDS
    for config_name in CONFIGS
    for layout in LAYOUTS
    if unsupported(backend, _config(config_name), LAYOUTS[layout][1]) is None
]


@pytest.mark.parametrize("backend,config_name,layout", CASES)
def test_no_output_depends_on_a_later_padded_or_foreign_input(backend, config_name, layout):
    config = _config(config_name)
    mask, seg = LAYOUTS[layout]
    reason = skip_reason(backend, config, seg)
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, T, D))
    _, vjp = pullback(backend, config, noisy_params(config), x, mask, seg)
    ok = allowed(mask, seg)
    reached = {"earlier": 0, "earlier chunk": 0}  # allowed (i, j < i) pairs with nonzero grad
    for r in range(2):
        for i in QUERIES:
            cot = np.zeros((2, T, D))
            cot[r, i] = rng.normal(size=D)
            g = np.abs(vjp(cot)).sum(-1)  # (b, t): |d <out[r, i], cot> / d x[., j]|
            where = f"out[{r}, {i}]"
            assert not g[1 - r].any(), f"{where} depends on the other batch row"
            bad = np.nonzero(g[r] * ~ok[r, i])[0]
            assert bad.size == 0, f"{where} depends on x[{r}, {bad.tolist()}]"
            if not mask[r, i]:
                assert not g[r].any(), f"padded {where} depends on something"
                continue
            assert g[r, i] > 0, f"{where} does not depend on x[{r}, {i}]"
            hit = (g[r] > 0) & ok[r, i] & (np.arange(T) < i)  # relu^2 may zero a single pair
            reached["earlier"] += int(hit.sum())
            reached["earlier chunk"] += int(hit[: i - i % C].sum())
    assert all(n > 0 for n in reached.values()), reached
