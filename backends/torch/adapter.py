"""The conformance adapter of the torch backend (``flashcore.conformance.adapters.base``).

bfloat16 runs with bfloat16 weights and inputs (``module.to(torch.bfloat16)``), not under autocast:
the adapter checks the module in the dtype it is cast to, as a bf16 checkpoint is served, and
every backend's bf16 row then means the same thing (weights, inputs and stored intermediates in
bf16; the spec runs the attention core in float32). Autocast keeps float32 weights and rounds
only matmul inputs, a milder regime that tests/backend_torch checks separately.

Layer loss: sum(output * cotangent), reduced in float64 from the output (the reduction belongs to
the harness, not to the model). LM loss: ``LM.loss``, the chunked head and cross-entropy
(flashcore.lm_loss; low-precision logits are upcast to float32 by the spec); the logits come from
the forward.
"""

from __future__ import annotations

import contextlib

import numpy as np

import flashcore as fc
from flashcore.conformance import golden
from flashcore.conformance.adapters.base import Adapter, Result

__all__ = ["TorchAdapter", "build"]


def build(config, params: dict[str, np.ndarray]):
    """A float64 module of the right type with canonical ``params`` loaded."""
    import torch

    from .module import block_class

    cls = block_class(config)
    module = cls(config, init=False, dtype=torch.float64)
    module.load_canonical(params)
    return module


class TorchAdapter(Adapter):
    name = "torch"
    dtypes = ("float64", "float32", "bfloat16")

    def unavailable(self) -> str | None:
        try:
            import array_api_compat.torch  # noqa: F401
            import torch  # noqa: F401
        except ImportError as err:
            return f"torch is not installed ({err})"
        return None

    @contextlib.contextmanager
    def strict_precision(self):
        """No TF32 in matmuls or convolutions; restores the previous settings on exit."""
        import torch

        saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision(),
        )
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved[0]
            torch.backends.cudnn.allow_tf32 = saved[1]
            torch.set_float32_matmul_precision(saved[2])

    def run(self, config, params, inputs, dtype) -> Result:
        import torch

        dt = getattr(torch, dtype)
        module = build(config, params).to(dt).eval()
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        kw = dict(mask=t.get("mask"), segment_ids=t.get("segment_ids"))
        masks = golden.dropout_masks(t)  # given keep-masks (dropout cases), applied in eval mode
        if masks is not None:
            kw["dropout"] = masks
        grads: dict[str, np.ndarray] = {}
        if isinstance(config, fc.LMConfig):
            types = {"token_type_ids": t.get("token_type_ids")}
            out = module(t["tokens"], **types, **kw)  # (b, t, v)
            loss = module.loss(t["tokens"], t["targets"], **types, **kw)  # the chunked loss
            loss.backward()
        else:
            x = t["x"].to(dt).requires_grad_(True)  # (b, t, d)
            out = module(x, **kw)
            loss = torch.sum(out.double() * t["cotangent"])
            loss.backward()
            grads["x"] = x.grad.double().numpy()
        native = dict(module.named_parameters())
        for name, (native_name, transpose) in module.naming.items():
            g = native[native_name].grad
            g = torch.zeros_like(native[native_name]) if g is None else g
            grads[f"param/{name}"] = (g.mT if transpose else g).double().numpy()
        return Result(out.detach().double().numpy(), float(loss.detach().double()), grads)
