"""The torch step of ``flashcore bench`` (the models, the step's one definition, the children and
the report are the application's: :mod:`flashcore.app.benchrun`, :mod:`flashcore.app.bench`), and
the ``torch.mm`` matmul peak the run measures GFLOP/s against.

Models: ``flashcore`` (``flashcore.torch.FLASH`` layers: on the CPU the fused layer of
``flashcore.torch.kernels.torch_layer``), ``flashcore-speclayer`` (the same layers through the
spec's layer, ``flashcore.flash``, with ``flashcore.torch.kernels.attention_core``: the path
before the fused layer), ``flashcore-speccore`` (the spec's layer with the spec's own core), ``flash-pytorch`` (the peer, ``flash_pytorch.FLASH``) and ``transformer++``
(``flashcore.torch.TransformerBlock``, attention on SDPA). One step: forward under
``torch.autocast("cpu", torch.bfloat16)`` for bfloat16 (float32 parameters and x), then
``sum(y.float() * cotangent).backward()`` into x and every parameter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import flashcore as fc
from flashcore.layers import attention_core_flash

from . import kernels
from .layers import FLASH, TransformerBlock
from .naming import naming_table
from .xp import xp

__all__ = ["MODELS", "build_step", "matmul_peak", "attention_cores"]

MODELS = (
    "flashcore",
    "flashcore-speclayer",
    "flashcore-speccore",
    "flash-pytorch",
    "transformer++",
)


class _SpecLayer(nn.Module):
    """A flashcore.torch.FLASH layer's parameters through the spec's layer with ``core``."""

    def __init__(self, layer: FLASH, core):
        super().__init__()
        self.layer, self.core = layer, core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, t, d) -> (b, t, d)."""
        p = self.layer.canonical_params()
        return fc.flash(p, x, config=self.layer.config, xp=xp, core=self.core)


def _flashcore_layers(config, weights: list[dict], *, core=None) -> nn.Sequential:
    """``flashcore.torch.FLASH`` layers loaded with ``weights`` (canonical), in sequence; with
    ``core``, each through the spec's layer with that attention core instead."""
    layers = []
    for w in weights:
        layer = FLASH(config, init=False)
        layer.load_canonical(w)
        layers.append(_SpecLayer(layer, core) if core is not None else layer)
    return nn.Sequential(*layers)


def _flash_pytorch_pair(config):
    from flash_pytorch import FLASH as PeerFLASH

    def make():
        return PeerFLASH(
            dim=config.dim,
            group_size=config.chunk_size,
            query_key_dim=config.qk_dim,
            expansion_factor=config.expansion,
            causal=config.causal,
        )

    return nn.Sequential(make(), make())


def _transformer_block(config, weights: list[dict]):
    """``flashcore.torch.TransformerBlock`` loaded with ``weights[0]`` (canonical)."""
    block = TransformerBlock(config, init=False)
    block.load_canonical(weights[0])
    return block


def build_model(model: str, config, weights: list[dict]):
    """The torch module of a benchmarked model (layers in sequence: (1, T, d) -> (1, T, d))."""
    if model == "flashcore":
        return _flashcore_layers(config, weights)
    if model == "flashcore-speclayer":
        return _flashcore_layers(config, weights, core=kernels.attention_core)
    if model == "flashcore-speccore":
        return _flashcore_layers(config, weights, core=attention_core_flash)
    if model == "flash-pytorch":
        return _flash_pytorch_pair(config)
    if model == "transformer++":
        return _transformer_block(config, weights)
    raise ValueError(f"flashcore.torch.bench has no model {model!r} (it has {MODELS})")


def build_step(
    model: str,
    config,
    weights: list[dict],
    x: np.ndarray,
    cot: np.ndarray,
    dtype: str,
    *,
    threads: int | None = None,
    compile: bool = False,
) -> tuple[Callable[[], object], Callable[[], dict], dict]:
    """One benchmark step of ``model`` on x / cot (1, T, d) float32 in ``dtype``.

    Returns (run, gradients, info): run() does one forward + backward of sum(y * cot); gradients()
    does one and returns {"loss", "x", "layers.{i}.<canonical name>"} as float64 NumPy (the peer:
    loss and x); info: the parameter count, torch's threads and (flashcore) the core's path."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # the peer's own init
    net = build_model(model, config, weights)
    info: dict = {"params": sum(p.numel() for p in net.parameters())}
    if model == "flashcore":
        info["core_path"] = kernels.core_path(
            torch.zeros(1, x.shape[1], config.expanded_dim), config
        )
    info["threads"] = torch.get_num_threads()
    step_net = torch.compile(net) if compile else net
    xt = torch.from_numpy(x).requires_grad_(True)
    ct = torch.from_numpy(cot)
    params = list(net.parameters())
    use_bf16 = dtype == "bfloat16"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")

    def run():
        xt.grad = None
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            y = step_net(xt)
        loss = (y.float() * ct).sum()
        loss.backward()
        return loss

    def gradients() -> dict:
        loss = run()
        f64 = lambda t: t.detach().double().numpy()  # noqa: E731
        out = {"loss": f64(loss), "x": f64(xt.grad)}
        if model != "flash-pytorch":
            layers = [getattr(m, "layer", m) for m in (net if model != "transformer++" else [net])]
            for i, layer in enumerate(layers):
                native = dict(layer.named_parameters())
                for name, (path, transpose) in naming_table(layer.config).items():
                    g = native[path].grad
                    out[f"layers.{i}.{name}"] = f64(g.mT if transpose else g)
        return out

    return run, gradients, info


def matmul_peak(n: int, dtype: str, *, threads: int | None = None, repeats: int = 5) -> dict:
    """GFLOP/s of ``torch.mm`` of n x n in ``dtype`` (median of ``repeats`` after two untimed),
    by wall and by process CPU time."""
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    out = torch.empty(n, n, dtype=dt)
    for _ in range(2):
        torch.mm(a, b, out=out)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b, out=out)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n**3
    return {
        "gflops": flop / statistics.median(wall) / 1e9,
        "gflops_cpu": flop / statistics.median(cpu) / 1e9,
        "threads": torch.get_num_threads(),
    }


def _cpu_seconds(fn, repeats: int) -> float:
    """Median process CPU seconds of ``fn()`` over ``repeats`` calls after one untimed."""
    fn()
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return statistics.median(times)


def attention_cores(
    t: int,
    dtype: str,
    *,
    dim: int = 512,
    qk_dim: int = 128,
    expansion: int = 2,
    heads: int = 8,
    threads: int | None = None,
    repeats: int = 3,
) -> dict:
    """GAU's fused relu^2 core against SDPA, causal and not: {"causal" | "full": {"gau_s",
    "sdpa_s", "gau_fwd_s", "sdpa_fwd_s"}} in CPU seconds (median of ``repeats``) of one forward
    + backward (``*_fwd_s``: forward alone, no autograd) at T = ``t``.

    GAU: :func:`flashcore.torch.kernels.torch_core.gau_core_torch` on q, k (1, t, s), v (1, t, e)
    and a (t, t) bias, s and e the benchmarked FLASH layer's; SDPA:
    ``scaled_dot_product_attention`` on q, k, v (1, heads, t, d / heads), the Transformer++
    block's (``dim``, ``qk_dim``, ``expansion``, ``heads``: the application's benchmark shapes,
    passed in). Inputs in ``dtype`` (what autocast hands the cores in bfloat16), standard normal."""
    from .kernels.torch_core import gau_core_torch

    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    d, s, e, nh = dim, qk_dim, expansion * dim, heads
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(dt).requires_grad_(True)

    q, k, v = leaf(1, t, s), leaf(1, t, s), leaf(1, t, e)
    bias = leaf(t, t, scale=0.1)
    hq, hk, hv = (leaf(1, nh, t, d // nh) for _ in range(3))
    dout, hdout = torch.randn(1, t, e).to(dt), torch.randn(1, nh, t, d // nh).to(dt)
    out = {}
    for causal in (True, False):
        config = fc.FlashConfig(dim=d, kind="gau", qk_dim=s, causal=causal, max_len=t)

        def gau(config=config):
            return gau_core_torch(q, k, v, bias=bias, config=config)

        def sdpa(causal=causal):
            f = torch.nn.functional.scaled_dot_product_attention
            return f(hq, hk, hv, is_causal=causal)

        res = {
            "gau_s": _cpu_seconds(lambda: gau().backward(dout), repeats),
            "sdpa_s": _cpu_seconds(lambda: sdpa().backward(hdout), repeats),
        }
        with torch.no_grad():
            res["gau_fwd_s"] = _cpu_seconds(gau, repeats)
            res["sdpa_fwd_s"] = _cpu_seconds(sdpa, repeats)
        out["causal" if causal else "full"] = res
    return out
