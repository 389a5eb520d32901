"""What ``flashcore bench --backend torch`` measures: the models, the FLOP model, one measurement.

Measured side by side in one run, at batch 1, for each sequence length T and dtype (float32, and
bfloat16 autocast):

- ``flashcore``: two ``flashcore.torch.FLASH`` layers (dim 512, chunk 256, qk 128, e = 1024,
  causal); their attention core goes through ``flashcore.torch.kernels.attention_core``;
- ``flashcore-speccore`` (optional): the same layers with the spec's own core (no fast path);
- ``flash-pytorch``: two ``flash_pytorch.FLASH(dim=512, group_size=256, query_key_dim=128,
  causal=True)`` layers (version 0.1.9, the peer implementation);
- ``transformer++``: one ``flashcore.torch.TransformerBlock`` (RMSNorm, RoPE, causal attention
  on ``scaled_dot_product_attention``, SwiGLU: the block ``flashcore train --arch transformer``
  trains) with the FFN width chosen from the parameter spec so that it has the parameter count
  of the FLASH pair.

Every (model, dtype, T) runs in its own child process, ``python -m flashcore.torch.bench --child
JSON`` (:func:`child`; the command, the children and the report are the application's:
:mod:`flashcore.app.torchbench`); the fp32 and bf16 matmul peaks are ``torch.mm`` of 4096 x 4096,
in children too. A step is forward + backward of ``sum(y * cotangent)`` w.r.t. the input and
every parameter; the time is the median of ``--repeats`` steps after ``--warmup`` steps, as wall
time (and process CPU time, which is less sensitive to other processes on the machine).

FLOPs: 3x the forward matmul FLOPs (backward = 2x forward). FLASH layer, per token:
2 (d (2e + s) + e d) + 2 (C s + C e + 2 s e) (dense C x C chunks, as both FLASH implementations
compute them); Transformer++: 2 (4 d^2 + 3 d f) + 2 T d (causal attention, half of T x T).

    flashcore bench --backend torch                       # T in {1K, 4K, 16K, 64K}, both dtypes
    flashcore bench --backend torch --lengths 1K,4K --dtypes float32 --repeats 3
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

__all__ = ["child", "flops_per_token", "matched_ffn_dim", "flash_layer_params"]

DIM, CHUNK, QK, EXPANSION, HEADS = 512, 256, 128, 2, 8
RESULT_MARK = "BENCH_RESULT "  # the child's result line: RESULT_MARK + json
MODELS = ("flashcore", "flashcore-speccore", "flash-pytorch", "transformer++")
DEFAULT_MODELS = ("flashcore", "flash-pytorch", "transformer++")
DTYPES = ("float32", "bfloat16")

# -- models -------------------------------------------------------------------------------------


def _flash_config():
    import flashcore as fc

    return fc.FlashConfig(
        dim=DIM, expansion=EXPANSION, qk_dim=QK, chunk_size=CHUNK, causal=True, max_len=CHUNK
    )


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flashcore_pair(spec_core: bool):
    from torch import nn

    from flashcore.torch import FLASH

    config = _flash_config()
    layers = [FLASH(config, seed=i) for i in range(2)]
    if spec_core:
        from flashcore.layers import attention_core_flash

        class _SpecCore(nn.Module):  # the same parameters; the spec's core instead of the kernels
            def __init__(self, layer):
                super().__init__()
                self.layer = layer

            def forward(self, x):
                import flashcore as fc

                from .xp import xp

                return fc.flash(
                    self.layer.canonical_params(),
                    x,
                    config=self.layer.config,
                    xp=xp,
                    core=attention_core_flash,
                )

        layers = [_SpecCore(m) for m in layers]
    return nn.Sequential(*layers)


def _flash_pytorch_pair():
    from flash_pytorch import FLASH
    from torch import nn

    make = lambda: FLASH(dim=DIM, group_size=CHUNK, query_key_dim=QK, causal=True)  # noqa: E731
    return nn.Sequential(make(), make())


def _spec_params(config) -> int:
    """The parameter count of a block config, from its canonical parameter spec."""
    import numpy as np

    import flashcore as fc

    return sum(int(np.prod(p.shape)) for p in fc.param_spec(config).values())


def _transformer_config(ffn_dim: int):
    import flashcore as fc

    return fc.TransformerConfig(dim=DIM, heads=HEADS, ffn_dim=ffn_dim, causal=True)


def matched_ffn_dim(target_params: int) -> int:
    """The SwiGLU width f (a multiple of 8) whose Transformer++ block has about ``target_params``
    parameters (counted from the parameter spec; the count grows linearly in f)."""
    p8, p16 = _spec_params(_transformer_config(8)), _spec_params(_transformer_config(16))
    slope = (p16 - p8) / 8
    return max(8, int(round((8 + (target_params - p8) / slope) / 8)) * 8)


def _transformer_block(ffn_dim: int):
    """flashcore.torch's Transformer++ block (its attention on torch's SDPA), seeded."""
    from flashcore.torch import TransformerBlock

    return TransformerBlock(_transformer_config(ffn_dim), seed=0)


def flops_per_token(model: str, t: int, ffn_dim: int | None = None) -> float:
    """Forward+backward FLOPs per token (3x the forward matmul FLOPs)."""
    d, e, s, c = DIM, EXPANSION * DIM, QK, CHUNK
    if model.startswith("flash"):
        layer = 2 * (d * (2 * e + s) + e * d) + 2 * (c * s + c * e + 2 * s * e)
        return 3.0 * 2 * layer
    f = ffn_dim or matched_ffn_dim(2 * flash_layer_params())
    return 3.0 * (2 * (4 * d * d + 3 * d * f) + 2 * t * d)


def flash_layer_params() -> int:
    """The parameter count of one benchmarked FLASH layer (from the parameter spec)."""
    return _spec_params(_flash_config())


# -- the child process: one measurement ------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child_matmul(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    n = job.get("n", 4096)
    dt = getattr(torch, job["dtype"])
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    out = torch.empty(n, n, dtype=dt)
    for _ in range(2):
        torch.mm(a, b, out=out)
    wall, cpu = [], []
    for _ in range(job.get("repeats", 5)):
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


def _child_step(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model_name, t, dtype = job["model"], job["t"], job["dtype"]
    info: dict = {}
    if model_name in ("flashcore", "flashcore-speccore"):
        model = _flashcore_pair(spec_core=model_name == "flashcore-speccore")
        if model_name == "flashcore":
            from flashcore.torch import kernels

            x0 = torch.zeros(1, t, EXPANSION * DIM)
            info["core_path"] = kernels.core_path(x0, _flash_config())
    elif model_name == "flash-pytorch":
        model = _flash_pytorch_pair()
    else:
        model = _transformer_block(job["ffn_dim"])
    info["params"] = _param_count(model)
    if job.get("compile"):
        model = torch.compile(model)
    x = torch.randn(1, t, DIM, requires_grad=True)
    cot = torch.randn(1, t, DIM)
    params = [p for p in model.parameters()]
    use_bf16 = dtype == "bfloat16"

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            y = model(x)
        (y.float() * cot).sum().backward()

    rss0 = _rss_mb()  # model, input and imports resident; the steps' own memory comes on top
    for _ in range(job["warmup"]):
        step()
    wall, cpu = [], []
    for _ in range(job["repeats"]):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    peak = _peak_rss_mb()
    info.update(
        wall_s=statistics.median(wall),
        cpu_s=statistics.median(cpu),
        wall_all=wall,
        # The high-water mark of the steps above what was resident before the first one.
        peak_mb=max(0.0, peak - rss0),
        rss_before_mb=rss0,
        threads=torch.get_num_threads(),
    )
    return info


def child(job: dict) -> int:
    """Run one job ({"kind": "matmul" | "step", ...}) and print ``RESULT_MARK {json}``: the
    measurement, or {"error": why}."""
    try:
        res = _child_matmul(job) if job["kind"] == "matmul" else _child_step(job)
    except Exception as err:  # reported in the table
        res = {"error": f"{type(err).__name__}: {err}"}
    print(RESULT_MARK + json.dumps(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: python -m flashcore.torch.bench --child JSON (run by flashcore bench)")
    sys.exit(child(json.loads(sys.argv[2])))
