import numpy as np
import pytest

from flashcore.app import data


def test_user_folder_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.txt").write_bytes(bytes([65 + i % 26]) * (100 + i))
    a, b = data.load_corpus(tmp_path, holdout=0.2), data.load_corpus(tmp_path, holdout=0.2)
    assert a.fingerprint == b.fingerprint and len(a.train) and len(a.valid)
    assert len(a.train) + len(a.valid) == sum(100 + i for i in range(40)) + 40 - 2  # separators


def test_single_file_is_split_by_bytes(tmp_path):
    f = tmp_path / "one.txt"
    f.write_bytes(bytes(range(256)) * 4)
    c = data.load_corpus(f, holdout=0.25)
    assert len(c.train) == 768 and len(c.valid) == 256


def test_batches_are_shifted_windows():
    stream = np.arange(200, dtype=np.uint8)
    x, y = data.sample_batch(stream, batch=3, context=10, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (3, 10) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    windows = list(data.eval_batches(stream, batch=4, context=10, max_tokens=60))
    assert sum(len(w[0]) for w in windows) == 6
    np.testing.assert_array_equal(windows[0][0][1], np.arange(10, 20))


def test_bad_data_gets_clear_errors(tmp_path):
    with pytest.raises(data.DataError, match="no such file or folder"):
        data.load_corpus(tmp_path / "nope")
    with pytest.raises(data.DataError, match="holds no files"):
        data.load_corpus(tmp_path)
    (tmp_path / "tiny.txt").write_bytes(b"abc")
    c = data.load_corpus(tmp_path / "tiny.txt", holdout=0.5)
    with pytest.raises(data.DataError, match="fewer than context"):
        data.sample_batch(c.train, 1, 64, np.random.default_rng(0))


def test_stdlib_corpus_is_available():
    c = data.load_corpus()
    assert c.name == "python-stdlib" and len(c.train) > 1_000_000 and len(c.valid) > 50_000
