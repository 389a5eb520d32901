"""The TensorFlow chunk loop of the LM loss (:data:`flashcore.loss.LossCore`): a fused linear
cross-entropy as a ``tf.custom_gradient`` over ``tf.while_loop``.

The tokens are padded to whole chunks (weight 0) and looped over chunk by chunk; the number of
tokens may be unknown at trace time (Keras' batch None). With a gradient (``grad=True``, the
default), each iteration takes the chunk's :func:`flashcore.loss.chunk_nll_sum` (the head and the
cross-entropy, the spec's) and its gradient with respect to the chunk's hidden states and the
head's weights (a ``tf.GradientTape`` on that chunk), carrying the head's gradient and writing the
hidden states' one; the chunk's logits never leave the loop body. The custom gradient scales the
two by the incoming cotangent. ``grad=False`` (evaluation) sums the chunks without gradients.

    loss = flashcore.lm_loss(params, x, y, config=cfg, xp=xp, loss_core=chunked_loss)
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["chunked_loss", "forward_only"]


def _chunks(h, targets, w, chunk: int):
    """(n, d), (n,), (n,) -> (c, chunk, d), (c, chunk), (c, chunk) padded with weight 0 (n may be
    dynamic; with n known, c = ceil(n / chunk) chunks of ceil(n / c) <= chunk tokens)."""
    n = h.shape[0]
    if n is not None:
        chunk = -(-n // max(1, -(-n // chunk)))
    else:
        n = tf.shape(h)[0]
    pad = -n % chunk
    hs = tf.reshape(tf.pad(h, [[0, pad], [0, 0]]), [-1, chunk, h.shape[1]])
    ts = tf.reshape(tf.pad(targets, [[0, pad]]), [-1, chunk])
    ws = tf.reshape(tf.pad(w, [[0, pad]]), [-1, chunk])
    return hs, ts, ws


def forward_only(fn, weights: dict, h, targets, w, chunk: int) -> tf.Tensor:
    """sum over chunks of ``fn(weights, h_c, targets_c, w_c)`` without gradients: ()."""
    hs, ts, ws = _chunks(h, targets, w, chunk)

    def body(i, total):
        return i + 1, total + tf.stop_gradient(fn(weights, hs[i], ts[i], ws[i]))

    _, total = tf.while_loop(
        lambda i, _: i < tf.shape(hs)[0], body, (tf.constant(0), tf.zeros((), w.dtype))
    )
    return total


def chunked_loss(fn, weights: dict, h, targets, w, chunk: int, grad: bool = True) -> tf.Tensor:
    """sum over chunks of ``fn(weights, h_c, targets_c, w_c)``, its gradient taken chunk by chunk
    (see the module doc). h: (n, d); targets: (n,) ints; w: (n,) float; weights: {name: tensor}
    of the head -> (), differentiable with respect to h and weights (``grad=False``: not)."""
    if not grad:
        return forward_only(fn, weights, h, targets, w, chunk)
    names = tuple(weights)

    @tf.custom_gradient
    def run(h, *tensors):
        hs, ts, ws = _chunks(h, targets, w, chunk)
        count = tf.shape(hs)[0]

        def body(i, total, grad_w, grad_h):
            hc = hs[i]
            with tf.GradientTape() as tape:
                tape.watch([hc, *tensors])
                part = fn(dict(zip(names, tensors)), hc, ts[i], ws[i])
            gh, *gw = tape.gradient(part, [hc, *tensors])
            gw = [tf.convert_to_tensor(g) for g in gw]
            return i + 1, total + part, [a + b for a, b in zip(grad_w, gw)], grad_h.write(i, gh)

        start = (
            tf.constant(0),
            tf.zeros((), w.dtype),
            [tf.zeros_like(p) for p in tensors],
            tf.TensorArray(h.dtype, size=count, element_shape=hs.shape[1:]),
        )
        _, total, grad_w, grad_h = tf.while_loop(lambda i, *_: i < count, body, start)
        grad_h = tf.reshape(grad_h.stack(), [-1, h.shape[1]])[: tf.shape(h)[0]]

        def backward(g):
            return [tf.cast(g, a.dtype) * a for a in (grad_h, *grad_w)]

        return total, backward

    return run(h, *(weights[k] for k in names))
