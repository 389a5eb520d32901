"""A NaN or +Inf in the input reaches exactly the outputs that depend on that position, in every
backend and core: its own row only; in its segment, the position itself and later ones (causal)
or the whole segment (not causal); never padding, another segment, an earlier position of its
chunk, or another batch row. Every other output equals the output for a finite value there.

Each batch row carries one bad input position (start, middle and last of a chunk, the last
position, padding, a hole, either side of a segment boundary that falls inside a chunk); one row
is clean. T = 13 with C = 4 is not a multiple of C. The expected set is written from the rule
above (:func:`expected`), not from running the layer; a reached output row is non-finite in every
feature.
"""

import numpy as np
import pytest
from _layer_backends import BACKENDS, forward, noisy_params, skip_reason, unsupported

import flashcore as fc
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction

T, C, D, FEATURE = 13, 4, 8, 3  # the bad value goes into one feature of x

# batch name -> list of rows (bad position or None, mask row or None, segment row or None).
_REAL = [True] * T
_PAD = [True] * 10 + [False] * 3  # right padding from 10
_HOLE = [True] * 6 + [False] + [True] * 6  # a hole at 6
_SEG = [0] * 6 + [1] * 7  # the boundary (6) is inside chunk 1 (4..7)
_SEG3 = [0] * 5 + [1] * 6 + [2] * 2
_SEG3_PAD = [True] * 11 + [False] * 2
BATCHES = {
    "nomask": [(0, None, None), (5, None, None), (7, None, None), (3, None, None),
               (12, None, None), (None, None, None)],
    "mask": [(11, _PAD, None), (9, _PAD, None), (6, _HOLE, None), (5, _HOLE, None),
             (4, _REAL, None), (None, _PAD, None)],
    "packed": [(2, _REAL, _SEG), (5, _REAL, _SEG), (6, _REAL, _SEG), (9, _REAL, _SEG),
               (12, _SEG3_PAD, _SEG3), (10, _SEG3_PAD, _SEG3), (4, _SEG3_PAD, _SEG3),
               (None, _SEG3_PAD, _SEG3)],
}  # fmt: skip

CONFIGS = {
    "flash-causal-shift": dict(kind="flash", causal=True, token_shift=True),
    "flash-causal-mean": dict(kind="flash", causal=True, linear_norm="mean"),
    "flash-bidir-shift": dict(kind="flash", causal=False, token_shift=True),
    "flash-bidir-length": dict(kind="flash", causal=False, linear_norm="length"),
    "gau-causal-shift": dict(kind="gau", causal=True, token_shift=True),
    "gau-bidir-softmax_plus": dict(kind="gau", causal=False, attention="softmax_plus"),
}


def _config(name):
    return fc.FlashConfig(dim=D, qk_dim=4, chunk_size=C, max_len=32, **CONFIGS[name])


def _arrays(batch):
    rows = BATCHES[batch]
    mask = None if rows[0][1] is None else np.array([r[1] for r in rows], bool)
    seg = None if rows[0][2] is None else np.array([r[2] for r in rows], np.int64)
    return [r[0] for r in rows], mask, seg


def expected(bad, mask, seg, config) -> np.ndarray:
    """(b, t) bool from the rule alone: output i of row r is reached by the bad input j of row r
    when i is real and in j's segment, and j is read by some position k <= i (causal) or by any k
    of the segment (not causal). Position j is read by itself when real, and with token shift
    by j + 1 when that is real and in the same segment."""
    b = len(bad)
    real = np.ones((b, T), bool) if mask is None else mask
    segs = np.zeros((b, T), int) if seg is None else seg
    out = np.zeros((b, T), bool)
    for r, j in enumerate(bad):
        if j is None or not real[r, j]:
            continue  # padding is never read
        readers = [j]
        if config.token_shift and j + 1 < T and real[r, j + 1] and segs[r, j + 1] == segs[r, j]:
            readers.append(j + 1)
        for i in range(T):
            if real[r, i] and segs[r, i] == segs[r, j]:
                out[r, i] = any(k <= i for k in readers) if config.causal else True
    return out


CASES = [
    (backend, config_name, batch)
    for backend in BACKENDS
    for config_name in CONFIGS
    for batch in BATCHES
    if unsupported(backend, _config(config_name), _arrays(batch)[2]) is None
]


@pytest.mark.parametrize("backend,config_name,batch", CASES)
def test_nonfinite_input_reaches_exactly_its_dependents(backend, config_name, batch):
    config = _config(config_name)
    bad, mask, seg = _arrays(batch)
    reason = skip_reason(backend, config, seg)
    if reason:
        pytest.skip(reason)
    params = noisy_params(config)
    x = np.random.default_rng(0).normal(size=(len(bad), T, D))
    want = expected(bad, mask, seg, config)
    assert want.any() and not want.all()  # the batch exercises both sides
    clean = forward(backend, config, params, x, mask, seg)
    assert np.isfinite(clean).all()
    for value in (np.nan, np.inf):
        y = x.copy()
        for r, j in enumerate(bad):
            if j is not None:
                y[r, j, FEATURE] = value
        got = forward(backend, config, params, y, mask, seg)
        hit = ~np.isfinite(got)  # (b, t, d)
        np.testing.assert_array_equal(hit.any(-1), want, err_msg=f"x = {value}: reached set")
        assert hit[want].all(), f"x = {value}: a reached row is only partly non-finite"
        n = longest_reduction(config, x.shape[1])
        assert_close(got[~want], clean[~want], reorder=n, scale=float(np.abs(clean).max()))


def test_expected_rule_by_hand():
    """The rule on two rows, written out: the test's oracle is itself checked."""
    cfg = _config("flash-causal-shift")
    seg = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]] * 2)
    mask = np.ones((2, T), bool)
    mask[1, 3] = False
    got = expected([2, 3], mask, seg, cfg)
    assert got[0].nonzero()[0].tolist() == list(range(2, T))
    assert not got[1].any()  # position 3 of row 1 is padding
    got = expected([1], None, seg[:1], cfg.replace(causal=False))
    assert got[0].nonzero()[0].tolist() == [0, 1]  # shift does not cross into segment 1


def test_decoding_contains_a_nonfinite_step_to_its_row():
    """Incremental decoding (causal FLASH): a NaN at step j reaches steps >= j of its row only."""
    import array_api_compat.numpy as xp

    from flashcore import decode

    cfg = _config("flash-causal-shift")
    params = noisy_params(cfg)
    x = np.random.default_rng(1).normal(size=(2, T, D))
    x[0, 6, FEATURE] = np.nan
    state = decode.decode_init(cfg, 2, xp=xp, dtype=xp.float64)
    outs = []
    for t in range(T):
        o, state = decode.decode_step(params, x[:, t], state, config=cfg)
        outs.append(o)
    hit = ~np.isfinite(np.stack(outs, axis=1)).all(-1)  # (b, t)
    assert hit[0].nonzero()[0].tolist() == list(range(6, T))
    assert not hit[1].any()
