"""The torch chunk loop of the LM loss (:data:`flashcore.loss.LossCore`): a fused linear
cross-entropy as a ``torch.autograd.Function``.

The forward runs :func:`flashcore.loss.chunk_nll_sum` (the head and the cross-entropy, the spec's)
on one chunk of tokens at a time and, when a gradient is wanted, its gradient with respect to the
chunk's hidden states and the head's weights right away (``torch.autograd.grad`` on that chunk);
the chunk's logits and softmax are freed before the next chunk. Only the (n, d) and head-sized
gradients are kept; the backward scales them by the incoming cotangent. Under ``torch.no_grad``
(evaluation), or when nothing needs a gradient, the chunks are summed without one.

    loss = flashcore.lm_loss(params, x, y, config=cfg, xp=xp, loss_core=chunked_loss)
"""

from __future__ import annotations

import torch

__all__ = ["chunked_loss"]


def _forward_only(fn, weights: dict, h, targets, w, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        parts = [
            fn(weights, h[i : i + chunk], targets[i : i + chunk], w[i : i + chunk])
            for i in range(0, h.shape[0], chunk)
        ]
    return torch.stack(parts).sum()


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, chunk, names, h, targets, w, *tensors):
        want_h, want_w = ctx.needs_input_grad[3], ctx.needs_input_grad[6:]
        grad_h = torch.empty_like(h) if want_h else None  # every chunk writes its rows
        grad_w = [None] * len(tensors)  # the first chunk's gradient, then the sum
        total = None
        with torch.enable_grad():
            for i in range(0, h.shape[0], chunk):
                hc = h[i : i + chunk].detach().requires_grad_(want_h)
                ps = [p.detach().requires_grad_(want) for p, want in zip(tensors, want_w)]
                part = fn(dict(zip(names, ps)), hc, targets[i : i + chunk], w[i : i + chunk])
                wrt = ([hc] if want_h else []) + [p for p, want in zip(ps, want_w) if want]
                grads = iter(torch.autograd.grad(part, wrt))
                if want_h:
                    grad_h[i : i + chunk] = next(grads)
                for k, want in enumerate(want_w):
                    if want:
                        g = next(grads)
                        grad_w[k] = g if grad_w[k] is None else grad_w[k].add_(g)
                part = part.detach()
                total = part if total is None else total + part
        ctx.save_for_backward(grad_h, *grad_w)
        return total

    @staticmethod
    def backward(ctx, g):
        grad_h, *grad_w = ctx.saved_tensors
        scaled = [None if a is None else a * g.to(a.dtype) for a in (grad_h, *grad_w)]
        return (None, None, None, scaled[0], None, None, *scaled[1:])


def chunked_loss(fn, weights: dict, h: torch.Tensor, targets, w, chunk: int) -> torch.Tensor:
    """sum over chunks of ``fn(weights, h_c, targets_c, w_c)`` with its gradient taken chunk by
    chunk (see the module doc). h: (n, d); targets: (n,) ints; w: (n,) float; weights: {name:
    tensor} of the head -> () tensor, differentiable with respect to h and weights."""
    names = tuple(weights)
    tensors = tuple(weights[k] for k in names)
    if not torch.is_grad_enabled() or not any(a.requires_grad for a in (h, *tensors)):
        return _forward_only(fn, weights, h, targets, w, chunk)
    return _ChunkedLoss.apply(fn, chunk, names, h, targets, w, *tensors)
