"""The TensorFlow :class:`flashcore.runtime.Engine`: a Keras :class:`~flashcore.tf.LM`, XLA-compiled
steps, and AdamW with its moments kept in canonical layout.

AdamW is written out here (a few lines over ``tf.Variable`` s) rather than taken from
``keras.optimizers.AdamW``, whose epsilon sits outside the bias correction: written out, it is
the update of :mod:`flashcore.runtime` exactly, so a run moves between engines without a jump.
bfloat16 runs the layers under Keras' ``mixed_bfloat16`` policy (float32 variables). Dropout (the
block config's rate) is drawn in the training step only (``training=True``, the LM's seed
generator, seeded with the run's seed); evaluation and generation apply none.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import flashcore as fc
from flashcore.generation import Generating
from flashcore.runtime import (
    OptimConfig,
    check_dtype,
    counted_positions,
    decays,
    loss_mask_rows,
    single_process_only,
)

from .lm import LM

__all__ = ["Engine"]


class Engine(Generating):
    def __init__(
        self,
        config: fc.LMConfig,
        params: dict[str, np.ndarray],
        *,
        dtype: str = "float32",
        optim: OptimConfig | None = None,
        seed: int = 0,
        data_parallel: bool = False,
    ) -> None:
        check_dtype(dtype)
        if data_parallel:  # one process on one device
            single_process_only("tf", "it trains on one device; use --backend torch or jax")
        fc.check_params(params, config)
        self.config, self.seed = config, seed
        self.workers, self.workers_note, self.is_main = 1, "", True  # no data parallelism
        policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
        self.model = LM(
            config,
            params={k: np.asarray(v, np.float32) for k, v in params.items()},
            dtype=policy,
            seed=seed,
        )
        self.optim_config = optim or OptimConfig()
        native = self.model.native_variables()
        shapes = {n: s.shape for n, s in fc.param_spec(config).items()}
        # (canonical name, variable, transpose, decays) in a fixed order
        self.slots = [
            (name, native[path], transpose, decays(name, shapes[name]))
            for name, (path, transpose) in self.model.table.items()
        ]
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for _, v, _, _ in self.slots]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for _, v, _, _ in self.slots]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._train = tf.function(self._train_step, jit_compile=True, reduce_retracing=True)
        self._eval = tf.function(self._loss, jit_compile=True, reduce_retracing=True)

    def _loss(self, x, y, count=None, training=False):
        """(b, t) inputs and targets, count: (b, t) bool loss mask or None -> () float32."""
        loss = self.model.loss(x, y, loss_mask=count, training=training, grad=training)
        return tf.cast(loss, tf.float32)

    def _train_step(self, x, y, count, lr):
        o = self.optim_config
        variables = [v for _, v, _, _ in self.slots]
        with tf.GradientTape() as tape:
            loss = self._loss(x, y, count, training=True)
        grads = tape.gradient(loss, variables)
        grads = [
            tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)
        ]
        if o.grad_clip > 0:
            norm = tf.linalg.global_norm(grads)
            grads = [g * tf.minimum(1.0, o.grad_clip / (norm + 1e-6)) for g in grads]
        self.step.assign_add(1)
        k = tf.cast(self.step, tf.float32)
        bc1, bc2 = 1.0 - o.b1**k, 1.0 - o.b2**k
        for (_, p, _, decay), g, m, v in zip(self.slots, grads, self.m, self.v):
            if decay and o.weight_decay:
                p.assign_sub(lr * o.weight_decay * p)
            m.assign(o.b1 * m + (1.0 - o.b1) * g)
            v.assign(o.b2 * v + (1.0 - o.b2) * g * g)
            p.assign_sub(lr / bc1 * m / (tf.sqrt(v) / tf.sqrt(bc2) + o.eps))
        return loss

    @staticmethod
    def _count(loss_mask: np.ndarray | None):
        m = loss_mask_rows(loss_mask)
        return None if m is None else tf.constant(m)

    def train_step(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        lr: float,
        loss_mask: np.ndarray | None = None,
    ) -> float:
        x = tf.constant(np.asarray(inputs, np.int32))
        y = tf.constant(np.asarray(targets, np.int32))
        count = self._count(loss_mask)
        return float(self._train(x, y, count, tf.constant(lr, tf.float32)))

    def eval_loss(
        self, inputs: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray | None = None
    ) -> tuple[float, int]:
        x = tf.constant(np.asarray(inputs, np.int32))
        y = tf.constant(np.asarray(targets, np.int32))
        n = counted_positions(targets, loss_mask)
        return float(self._eval(x, y, self._count(loss_mask))) * n, n

    def close(self) -> None:
        pass

    def params(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32) for k, v in self.model.to_canonical().items()}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        out = {}
        for (name, _, transpose, _), m, v in zip(self.slots, self.m, self.v):
            m_np, v_np = m.numpy(), v.numpy()
            out[f"m.{name}"] = m_np.T if transpose else m_np
            out[f"v.{name}"] = v_np.T if transpose else v_np
        out["step"] = np.asarray(int(self.step.numpy()), np.int64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        staged = []
        for (name, p, transpose, _), m, v in zip(self.slots, self.m, self.v):
            a, b = np.asarray(state[f"m.{name}"]), np.asarray(state[f"v.{name}"])
            a, b = (a.T, b.T) if transpose else (a, b)
            if a.shape != tuple(p.shape) or b.shape != tuple(p.shape):
                raise ValueError(f"optimizer state for {name}: shape {a.shape} != {tuple(p.shape)}")
            staged.append((m, a, v, b))
        for m, a, v, b in staged:
            m.assign(a.astype(np.float32))
            v.assign(b.astype(np.float32))
        self.step.assign(int(np.asarray(state["step"])))

    def _generate(self, prompt, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`): :meth:`flashcore.tf.LM.
        generate` (:mod:`flashcore.tf.decode`)."""
        return self.model.generate(prompt, max_new_tokens, seed=seed, lengths=lengths, **sampler)
