"""The TensorFlow :class:`flashcore.runtime.Engine`: a Keras :class:`~flashcore.tf.LM`, XLA-compiled
steps, and AdamW with its moments kept in canonical layout.

AdamW is written out here (a few lines over ``tf.Variable`` s) rather than taken from
``keras.optimizers.AdamW``, whose epsilon sits outside the bias correction: written out, it is
the update of :mod:`flashcore.runtime` exactly, so a run moves between engines without a jump.
bfloat16 runs the layers under Keras' ``mixed_bfloat16`` policy (float32 variables). Dropout (the
block config's rate) is drawn in the training step only (``training=True``, the LM's seed
generator, seeded with the run's seed); evaluation and generation apply none.

``grad_accum=N``: N compiled micro-batch steps add their weighted gradients into accumulators,
then one compiled step clips and applies them. ``checkpoint_activations=True``:
``tf.recompute_grad`` per block (:func:`flashcore.tf.lm.remat`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import flashcore as fc
from flashcore.generation import Generating
from flashcore.runtime import (
    OptimConfig,
    check_dtype,
    check_grad_accum,
    counted_positions,
    decays,
    loss_mask_rows,
    micro_batches,
    micro_weights,
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
        grad_accum: int = 1,
        checkpoint_activations: bool = False,
    ) -> None:
        check_dtype(dtype)
        check_grad_accum(grad_accum, grad_accum)
        self.grad_accum = grad_accum
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
        self.model.checkpoint_activations = checkpoint_activations
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
        self.norm = tf.Variable(float("nan"), dtype=tf.float32, trainable=False)
        self._train = tf.function(self._train_step, jit_compile=True, reduce_retracing=True)
        if grad_accum > 1:  # the gradient sum over the micro-batches of a step
            self.acc = [tf.Variable(tf.zeros_like(v), trainable=False) for _, v, _, _ in self.slots]
            compile = dict(jit_compile=True, reduce_retracing=True)
            self._add = tf.function(self._accumulate_step, **compile)
            self._apply = tf.function(self._apply_step, **compile)
        self._eval = tf.function(self._loss, jit_compile=True, reduce_retracing=True)

    def _loss(self, x, y, count=None, training=False):
        """(b, t) inputs and targets, count: (b, t) bool loss mask or None -> () float32."""
        loss = self.model.loss(x, y, loss_mask=count, training=training, grad=training)
        return tf.cast(loss, tf.float32)

    def _gradients(self, x, y, count):
        """-> the loss of (b, t) x, y (count: (b, t) bool or None) and its gradients, one per
        slot (zeros where a weight is unused)."""
        variables = [v for _, v, _, _ in self.slots]
        with tf.GradientTape() as tape:
            loss = self._loss(x, y, count, training=True)
        grads = tape.gradient(loss, variables)
        grads = [
            tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)
        ]
        return loss, grads

    def _update(self, grads, lr):
        """Clip ``grads`` to the global norm (recorded in ``norm``) and take one AdamW step."""
        o = self.optim_config
        norm = tf.linalg.global_norm(grads)
        self.norm.assign(norm)
        if o.grad_clip > 0:
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

    def _train_step(self, x, y, count, lr):
        loss, grads = self._gradients(x, y, count)
        self._update(grads, lr)
        return loss

    def _accumulate_step(self, x, y, count, weight):
        """Add ``weight`` times the gradients of one micro-batch to ``acc`` -> its loss."""
        loss, grads = self._gradients(x, y, count)
        for a, g in zip(self.acc, grads):
            a.assign_add(weight * g)
        return loss

    def _apply_step(self, lr):
        """The step of the gradients summed in ``acc``, which start again from zero."""
        self._update([a.read_value() for a in self.acc], lr)
        for a in self.acc:
            a.assign(tf.zeros_like(a))

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
        lr = tf.constant(lr, tf.float32)
        if self.grad_accum == 1:
            x = tf.constant(np.asarray(inputs, np.int32))
            y = tf.constant(np.asarray(targets, np.int32))
            return float(self._train(x, y, self._count(loss_mask), lr))
        parts = micro_batches(len(inputs), self.grad_accum)
        weights = micro_weights(targets, loss_mask, parts)
        total = 0.0
        for rows, w in zip(parts, weights):
            x = tf.constant(np.asarray(inputs, np.int32)[rows])
            y = tf.constant(np.asarray(targets, np.int32)[rows])
            count = self._count(loss_mask_rows(loss_mask, rows))
            total += float(self._add(x, y, count, tf.constant(w, tf.float32))) * float(w)
        self._apply(lr)
        return total

    @property
    def grad_norm(self) -> float:
        """The global gradient norm of the last step, before clipping (nan before any)."""
        return float(self.norm.numpy())

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
