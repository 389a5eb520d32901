"""The JAX :class:`flashcore.runtime.Engine`: the functional API with optax AdamW, jitted steps.

Parameters and AdamW moments are dicts keyed by canonical names (the functional API's own
layout), so the optimizer state moves to and from other engines unchanged. bfloat16 keeps float32
master weights and runs the forward and backward on bfloat16 copies (the spec's attention core
accumulates in float32).

``data_parallel=True`` with more than one device (:func:`jax.devices`): a 1-D "data" mesh over
them all (:mod:`flashcore.jax.parallel`), parameters and optimizer state replicated, each batch
split on axis 0; jit inserts the cross-device sums (the loss, the gradients, hence a global
clipping norm). With one device nothing changes.

``shard`` (``flashcore train --shard N``) and ``context_parallel`` (``--context-parallel N``):
a 2-D mesh that shards the parameters and AdamW state, or splits every sequence along t
(:mod:`flashcore.jax.shard`).

Dropout (the block config's rate): each ``train_step`` draws fresh keep-masks inside the jitted
step from ``fold_in(key(seed), step)``; ``eval_loss`` and ``generate`` apply none.

``grad_accum=N``: the jitted step runs the batch in N micro-batches under ``lax.scan`` (each the
N-th part of every device's rows, its gradient weighted by its share of the counted positions),
then one clip and one AdamW step; the dropout masks are drawn for the whole batch and split the
same way, so the step is the one without accumulation. ``checkpoint_activations=True``:
``jax.checkpoint`` per block (:func:`flashcore.jax.functional.remat`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import flashcore as fc
from flashcore.generation import Generating
from flashcore.runtime import (
    OptimConfig,
    check_dtype,
    check_grad_accum,
    check_split,
    counted_positions,
    decays,
    single_process_only,
)

from . import compiler, decode, functional, parallel
from . import shard as scale

__all__ = ["Engine"]


def _find_adam(state):
    """The ScaleByAdamState inside an optax chain state."""
    for leaf in jax.tree_util.tree_leaves(
        state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)
    ):
        if isinstance(leaf, optax.ScaleByAdamState):
            return leaf
    raise RuntimeError("no Adam state in the optimizer")


def _replace_adam(state, new):
    return jax.tree_util.tree_map(
        lambda s: new if isinstance(s, optax.ScaleByAdamState) else s,
        state,
        is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState),
    )


def _micro(a: jax.Array, n: int, workers: int) -> jax.Array:
    """(b, ...) -> (n, b / n, ...): micro-batch k holds the k-th n-th of every worker's rows (a
    worker's rows stay on it when b is split over ``workers`` devices)."""
    b = a.shape[0]
    m = b // (workers * n)
    a = jnp.reshape(a, (workers, n, m, *a.shape[1:]))  # (w, n, m, ...)
    return jnp.reshape(jnp.swapaxes(a, 0, 1), (n, workers * m, *a.shape[3:]))  # (n, w m, ...)


def _accumulated(grad, p, batch, n: int, workers: int, remat: bool):
    """(loss, gradients) of the mean loss over a batch, summed over ``n`` micro-batches under
    ``lax.scan``, each weighted by its share of the counted positions
    (:func:`flashcore.runtime.micro_weights`; equal shares without a loss mask).
    grad: ``value_and_grad`` of the loss (p, x, y, count, masks, remat); batch: (x, y, count,
    masks) with (b, ...) leaves (count, masks may be None)."""
    x, y, count, masks = jax.tree_util.tree_map(lambda a: _micro(a, n, workers), batch)
    if count is None:
        weights = jnp.full((n,), 1.0 / n, jnp.float32)
    else:
        counted = jnp.sum(count, axis=(1, 2)).astype(jnp.float32)  # (n,)
        weights = counted / jnp.maximum(jnp.sum(counted), 1.0)

    def one(acc, part):
        loss_sum, grad_sum = acc
        xk, yk, ck, mk, wk = part
        loss, g = grad(p, xk, yk, ck, mk, remat)
        grad_sum = jax.tree_util.tree_map(lambda s, gk: s + wk * gk, grad_sum, g)
        return (loss_sum + wk * loss, grad_sum), None

    zero = (jnp.float32(0.0), jax.tree_util.tree_map(jnp.zeros_like, p))
    (loss, grads), _ = jax.lax.scan(one, zero, (x, y, count, masks, weights))
    return loss, grads


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
        shard: int | None = None,
        context_parallel: int = 1,
        grad_accum: int = 1,
        checkpoint_activations: bool = False,
    ) -> None:
        check_dtype(dtype)
        check_grad_accum(grad_accum, grad_accum)
        self.grad_accum, self.grad_norm = grad_accum, float("nan")
        if data_parallel:  # over the devices of one process
            single_process_only("jax", "start it once; it uses every device it sees")
        fc.check_params(params, config)
        self.config, self.dtype, self.seed = config, dtype, seed
        self.mesh = parallel.data_mesh() if data_parallel and jax.device_count() > 1 else None
        self.workers, self.is_main = (1 if self.mesh is None else self.mesh.size), True
        self.workers_note = (
            f"{self.workers} {jax.devices()[0].platform} devices (jax.sharding)"
            if self.mesh is not None
            else ""
        )
        self.layout = None
        if shard is not None or context_parallel > 1:
            self._setup_scale(shard, context_parallel)
        self.compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        self.state = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in params.items()}
        o = self.optim_config = optim or OptimConfig()
        mask = {k: decays(k, v.shape) for k, v in self.state.items()}
        adamw = optax.inject_hyperparams(optax.adamw)(
            learning_rate=0.0, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask
        )
        self.tx = (
            optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw
        )
        self.opt_state = self.tx.init(self.state)
        self.state, self.opt_state = self._place((self.state, self.opt_state))

        self.dropout_key = jax.random.key(seed)
        self.steps = 0  # train steps done (the dropout stream's counter)

        def loss_fn(p, x, y, count=None, masks=None, remat=False):  # count: (b, t) bool mask
            cast = {k: v.astype(self.compute) for k, v in p.items()}
            if self.layout is not None and self.layout.axis == "context":
                return self._context_loss(cast, x, y, count, masks)
            loss = functional.loss(
                cast, x, y, config=config, dropout=masks, loss_mask=count,
                checkpoint_activations=remat,
            )  # fmt: skip
            return loss.astype(jnp.float32)

        def grads_fn(p, x, y, count, masks):
            """(loss, gradients) of the whole batch, in grad_accum micro-batches."""
            grad = jax.value_and_grad(loss_fn)
            if grad_accum == 1:
                return grad(p, x, y, count, masks, checkpoint_activations)
            return _accumulated(grad, p, (x, y, count, masks), grad_accum, self.workers,
                                checkpoint_activations)  # fmt: skip

        def train(p, opt_state, x, y, count, lr, key):
            opt_state = self._set_lr(opt_state, lr)
            masks = functional.dropout_masks(config, key, *x.shape)  # None when p = 0
            loss, grads = grads_fn(p, x, y, count, masks)
            updates, opt_state = self.tx.update(grads, opt_state, p)
            return loss, optax.apply_updates(p, updates), opt_state, optax.tree.norm(grads)

        if self.layout is not None:  # parameters and moments stay where layout.place put them
            outs = (
                None,
                self.layout.shardings(self.state),
                self.layout.shardings(self.opt_state),
                None,
            )  # (loss, parameters, moments, gradient norm)
            self._train = compiler.jit(train, out_shardings=outs)
        elif self.mesh is None:
            self._train = compiler.jit(train)
        else:  # the updated parameters and moments stay whole on every device
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._train = compiler.jit(train, out_shardings=replicated)
        self._eval = compiler.jit(loss_fn)

    def _setup_scale(self, shard: int | None, context: int) -> None:
        """The (data, fsdp) or (data, context) mesh over every device (:mod:`flashcore.jax.shard`)."""
        self.layout = scale.Layout.make(shard=shard, context=context)
        self.mesh, self.workers = self.layout.mesh, self.layout.data
        self.workers_note = (
            f"{self.layout.mesh.size} {jax.devices()[0].platform} devices (jax.sharding): "
            + self.layout.note()
        )

    def _context_loss(self, p, x, y, count, masks):
        """The mean loss with the sequences split over the context devices."""
        if count is not None or masks is not None:
            raise NotImplementedError("context-parallel training takes no loss mask and no dropout")
        return self.layout.context_loss(self.config, x.shape[0])(p, x, y).astype(jnp.float32)

    def _place(self, tree):
        """``tree`` replicated over the mesh (unchanged without one); sharded per the layout."""
        if self.layout is not None:
            return self.layout.place(tree)
        return tree if self.mesh is None else parallel.replicate(tree, self.mesh)

    def _batch(self, a: np.ndarray | None, dtype=np.int32):
        """(b, t) -> a jax array; split on b over the mesh when it divides evenly (None stays)."""
        if a is None:
            return None
        if self.layout is not None:
            self.layout.check_length(np.shape(a)[1])
            return self.layout.batch(np.asarray(a, dtype))
        if self.mesh is None:
            return jnp.asarray(np.asarray(a, dtype))
        a = np.asarray(a, dtype)
        if len(a) % self.workers:  # e.g. the last held-out batch: run it whole on every device
            return parallel.replicate(a, self.mesh)
        return parallel.shard_batch(a, self.mesh)

    @staticmethod
    def _set_lr(opt_state, lr):
        """The state with its injected learning rate replaced (optax names the state class
        differently across versions; it is the one with ``hyperparams``)."""

        def has_hyper(s) -> bool:
            return hasattr(s, "hyperparams") and hasattr(s, "_replace")

        def fix(s):
            return (
                s._replace(hyperparams={**s.hyperparams, "learning_rate": lr})
                if has_hyper(s)
                else s
            )

        return jax.tree_util.tree_map(fix, opt_state, is_leaf=has_hyper)

    def train_step(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        lr: float,
        loss_mask: np.ndarray | None = None,
    ) -> float:
        check_split(len(inputs), self.workers, self.workers_note)
        key = jax.random.fold_in(self.dropout_key, self.steps)
        loss, self.state, self.opt_state, norm = self._train(
            self.state,
            self.opt_state,
            self._batch(inputs),
            self._batch(targets),
            self._batch(loss_mask, bool),
            jnp.float32(lr),
            key,
        )
        self.steps += 1
        self.grad_norm = float(norm)
        return float(loss)

    def eval_loss(
        self, inputs: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray | None = None
    ) -> tuple[float, int]:
        count = self._batch(loss_mask, bool)
        loss = self._eval(self.state, self._batch(inputs), self._batch(targets), count)
        n = counted_positions(targets, loss_mask)
        return float(loss) * n, n

    def params(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32) for k, v in self.state.items()}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        adam = _find_adam(self.opt_state)
        out = {f"m.{k}": np.asarray(v, np.float32) for k, v in adam.mu.items()}
        out.update({f"v.{k}": np.asarray(v, np.float32) for k, v in adam.nu.items()})
        out["step"] = np.asarray(int(adam.count), np.int64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        adam = _find_adam(self.opt_state)
        mu, nu = {}, {}
        for k, v in self.state.items():
            m, s = np.asarray(state[f"m.{k}"]), np.asarray(state[f"v.{k}"])
            if m.shape != v.shape or s.shape != v.shape:
                raise ValueError(f"optimizer state for {k}: shape {m.shape} != {v.shape}")
            mu[k], nu[k] = jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32)
        count = jnp.asarray(int(np.asarray(state["step"])), adam.count.dtype)
        self.steps = int(np.asarray(state["step"]))
        new = _replace_adam(self.opt_state, adam._replace(count=count, mu=mu, nu=nu))
        self.opt_state = self._place(new)
        # optax's adamw keeps its own count for bias correction; inject_hyperparams wraps it.

    def close(self) -> None:
        pass

    def _generate(self, prompt, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`) on one device."""
        params = {k: v.astype(self.compute) for k, v in self.state.items()}
        if self.mesh is not None:  # decode on one device
            params = jax.device_put(params, jax.devices()[0])
        return decode.generate(
            params, prompt, config=self.config, max_new_tokens=max_new_tokens, seed=seed,
            lengths=lengths, **sampler,
        )  # fmt: skip
