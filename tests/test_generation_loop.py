"""The compiled generation loop (``loop=`` of :func:`flashcore.generation.generate`: jax's
``lax.fori_loop``, TF's XLA ``while_loop``) against the host loop it replaces, and the persistent
compilation cache of the command-line tools (:func:`flashcore.app.engine.enable_compile_cache`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from _cases import flash_cfg, noisy_params

import flashcore as fc
from flashcore import decode, generation, sampling
from flashcore.app import engine as app_engine

LMS = {
    "flash": fc.LMConfig(block=flash_cfg(causal=True), vocab_size=13),
    "transformer": fc.LMConfig(block=fc.TransformerConfig(dim=16, heads=2), vocab_size=13),
}
PROMPT = np.random.default_rng(4).integers(0, 13, (2, 6))
LENGTHS = np.array([6, 3])
SAMPLER = {"temperature": 1.5, "top_k": 4, "top_p": None}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _spec_step_pick(cfg, p):
    def step(tok, state):
        return decode.lm_decode_step(p, tok, state, config=cfg, xp=xnp)

    def pick(logits, u):
        return sampling.sample(logits, u, xp=xnp, **SAMPLER)

    def init(b, cap):
        return decode.lm_decode_init(cfg, b, capacity=cap, xp=xnp, dtype=np.float64)

    return init, step, pick


def test_generate_hands_the_loop_the_prompt_lengths_and_draws():
    """A backend's loop receives the state, the right-padded prompts, their lengths, the draws and
    the start, and its output is returned with the positions past each row's end zeroed."""
    cfg = LMS["flash"]
    p = noisy_params(cfg, 3)
    init, step, pick = _spec_step_pick(cfg, p)
    seen = {}

    def loop(state, out, n, draws, start):  # the host loop's steps, written out here
        seen.update(out=out.copy(), n=n.copy(), draws=draws.copy(), start=start)
        for t in range(start, out.shape[1] - 1):
            logits, state = step(out[:, t], state)
            new = np.asarray(pick(logits, draws[t]), np.int64)
            out[:, t + 1] = generation.next_tokens(out[:, t + 1], new, t + 1, n, np)
        return out

    kw = dict(max_new_tokens=5, lengths=LENGTHS, seed=3, init=init, step=step, pick=pick)
    kw["forward_last"] = None
    want = generation.generate_lm(cfg, PROMPT, **kw)
    got = generation.generate_lm(cfg, PROMPT, loop=loop, **kw)
    np.testing.assert_array_equal(got, want)
    assert seen["start"] == 0 and seen["out"].shape == (2, 11)
    np.testing.assert_array_equal(
        seen["out"][:, :6], np.where(np.arange(6) < LENGTHS[:, None], PROMPT, 0)
    )
    np.testing.assert_array_equal(seen["n"], LENGTHS)
    np.testing.assert_array_equal(seen["draws"], sampling.uniform_draws(3, 10, 2))
    assert np.all(got[1, 3 + 5 :] == 0) and np.all(got[1, :3] == PROMPT[1, :3])


def _host_tokens(cfg, p, step_fn, seed):
    """The host loop (no ``loop``) on the spec's step in float64: the reference tokens."""
    init, _, pick = _spec_step_pick(cfg, p)
    kw = dict(max_new_tokens=7, lengths=LENGTHS, seed=seed, init=init, forward_last=None)
    return generation.generate_lm(cfg, PROMPT, step=step_fn, pick=pick, **kw)


def _backend_generate(backend: str, cfg, p, seed):
    if backend == "jax":
        jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
        from flashcore.jax import decode as jdecode

        params = {k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in p.items()}
        return jdecode.generate(
            params, PROMPT, config=cfg, max_new_tokens=7, seed=seed, lengths=LENGTHS, **SAMPLER
        )
    pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
    from flashcore.tf import LM

    lm = LM(cfg, params={k: v.astype(np.float32) for k, v in p.items()})
    return lm.generate(PROMPT, 7, seed=seed, lengths=LENGTHS, **SAMPLER)


@pytest.mark.parametrize("backend", ["jax", "tf"])
@pytest.mark.parametrize("name", sorted(LMS))
def test_compiled_loop_samples_the_tokens_of_the_host_loop(backend, name):
    """Ragged prompts, temperature and top-k: the backend's compiled loop (float32) draws the
    tokens the host loop draws on the spec's float64 step, given the same seed."""
    cfg = LMS[name]
    p = noisy_params(cfg, 3)
    _, step, _ = _spec_step_pick(cfg, p)
    for seed in (0, 5):
        got = np.asarray(_backend_generate(backend, cfg, p, seed))
        want = _host_tokens(cfg, p, step, seed)
        assert got.shape == want.shape == (2, 13)
        np.testing.assert_array_equal(got, want, err_msg=f"{backend} {name} seed {seed}")


def test_compile_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(app_engine.COMPILE_CACHE_ENV, str(tmp_path / "c"))
    assert app_engine.compile_cache_dir() == tmp_path / "c"
    for off in ("off", "0", "none", "", "OFF"):
        monkeypatch.setenv(app_engine.COMPILE_CACHE_ENV, off)
        assert app_engine.compile_cache_dir() is None
        assert app_engine.enable_compile_cache("jax") is None
    monkeypatch.delenv(app_engine.COMPILE_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert app_engine.compile_cache_dir() == tmp_path / "xdg" / "flashcore" / "compile"
    assert app_engine.enable_compile_cache("torch") is None  # nothing to cache
    assert not (tmp_path / "xdg").exists()
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    folder = app_engine.enable_compile_cache("tf")
    assert folder == tmp_path / "xdg" / "flashcore" / "compile" / "tf" and folder.is_dir()
    assert os.environ["TF_XLA_FLAGS"] == (
        f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={folder}"
    )
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/mine")
    app_engine.enable_compile_cache("tf")
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine"  # theirs


def _child(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.skipif(not _installed("jax"), reason="the jax compilation cache needs jax")
def test_jax_compile_cache_is_written_and_reused(tmp_path):
    """Two processes generate with one cache folder: the first writes the compiled loop there,
    the second finds it (no new entry for the same shapes) and samples the same tokens."""
    folder = tmp_path / "cache"
    code = """
        import json, numpy as np, jax.numpy as jnp
        import flashcore as fc
        from flashcore.app.engine import enable_compile_cache
        from flashcore.jax import decode
        print(enable_compile_cache("jax"))
        cfg = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True,
                                               max_len=16), vocab_size=13)
        p = {k: jnp.asarray(v) for k, v in fc.init(cfg, 0).items()}
        out = decode.generate(p, np.array([[1, 2, 3]]), config=cfg, max_new_tokens=6, seed=1)
        print(json.dumps(out.tolist()))
    """
    env = {app_engine.COMPILE_CACHE_ENV: str(folder)}
    first = _child(code, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == str(folder / "jax")
    entries = sorted(p.name for p in (folder / "jax").iterdir())
    assert any(name.startswith("jit__loop") for name in entries), entries
    second = _child(code, env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1] == first.stdout.splitlines()[1]
    assert sorted(p.name for p in (folder / "jax").iterdir()) == entries  # all found, none added


@pytest.mark.skipif(not _installed("jax"), reason="the jax compilation cache needs jax")
def test_an_unusable_cache_folder_warns_and_caches_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = """
        from flashcore.app.engine import enable_compile_cache
        import jax
        print(enable_compile_cache("jax"), jax.config.jax_compilation_cache_dir)
    """
    res = _child(code, {app_engine.COMPILE_CACHE_ENV: str(blocker)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["None", "None"]
    assert "no compilation cache" in res.stderr and str(blocker) in res.stderr
