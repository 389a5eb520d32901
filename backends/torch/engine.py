"""The torch :class:`flashcore.runtime.Engine`: an :class:`~flashcore.torch.LM` with torch.optim.AdamW.

bfloat16 runs as CPU/CUDA autocast over float32 weights (the attention core accumulates in float32).
Dropout (the block config's rate) is drawn in ``train_step`` (train mode, the model's own seeded
generator) and never in ``eval_loss`` or ``generate`` (eval mode).
Optimizer moments are exchanged in canonical layout through the LM's naming table.

``data_parallel=True`` under torchrun (``WORLD_SIZE`` > 1) joins the process group
(:mod:`flashcore.torch.parallel`) and trains through ``DistributedDataParallel``: each rank
takes its rows of the global batch, DDP averages the gradients over the ranks during backward (so
the clipping norm below is the global one), and every rank applies the same AdamW step.

``shard`` (``flashcore train --shard``) and ``context_parallel`` (``--context-parallel``) replace
DistributedDataParallel with FSDP2 or with context-parallel FLASH steps: :mod:`flashcore.torch.shard`.

``grad_accum=N`` runs each rank's rows in N micro-batches, backward after backward into the same
``.grad`` (DDP's all-reduce deferred to the last one with ``no_sync``), then one clip and one step;
``checkpoint_activations=True`` recomputes each block in the backward pass
(:func:`flashcore.torch.lm.remat`). ``grad_norm``: the last step's global norm before clipping.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import flashcore as fc
from flashcore.generation import Generating
from flashcore.runtime import (
    OptimConfig,
    check_dtype,
    check_grad_accum,
    check_split,
    counted_positions,
    decays,
    loss_mask_rows,
    micro_batches,
    micro_weights,
)

from . import parallel
from . import shard as scale
from .lm import LM

__all__ = ["Engine"]


class _Loss(nn.Module):
    """``lm.loss`` as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, lm: LM):
        super().__init__()
        self.lm = lm

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(b, t), (b, t), (b, t) bool or None -> () mean cross-entropy."""
        return self.lm.loss(tokens, targets, loss_mask=loss_mask)


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
        device: str | None = None,
        shard: int | None = None,
        context_parallel: int = 1,
        grad_accum: int = 1,
        checkpoint_activations: bool = False,
    ) -> None:
        check_dtype(dtype)
        check_grad_accum(grad_accum, grad_accum)
        self.grad_accum, self.grad_norm = grad_accum, float("nan")
        self.config, self.dtype = config, dtype
        self.dp = parallel.join(device) if data_parallel else parallel.single(device)
        self.device = self.dp.device
        self.workers, self.is_main = self.dp.world, self.dp.rank == 0
        self.workers_note = (
            f"{self.workers} processes (torchrun, {self.dp.backend})" if self.workers > 1 else ""
        )
        self.model = LM(config, init=False, device=self.device)
        self.model.load_canonical(params)
        self.model.checkpoint_activations = checkpoint_activations
        self._loss = self.model.loss
        self._setup_scale(shard, context_parallel)
        if self.workers > 1 and not (self.sharded or self.context):
            self._loss = DistributedDataParallel(_Loss(self.model))
        self.optim_config = optim or OptimConfig()
        o = self.optim_config
        shapes = {n: s.shape for n, s in fc.param_spec(config).items()}
        native = dict(self.model.named_parameters())
        by_native = {native_name: c for c, (native_name, _) in self.model.naming.items()}
        decay = [p for n, p in native.items() if decays(by_native[n], shapes[by_native[n]])]
        keep = [p for n, p in native.items() if not decays(by_native[n], shapes[by_native[n]])]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": keep, "weight_decay": 0.0},
            ],
            lr=0.0,
            betas=(o.b1, o.b2),
            eps=o.eps,
        )
        self.generator = torch.Generator().manual_seed(seed)
        # Dropout (config.dropout > 0) in train_step only; each rank its own masks.
        self.model.generator = torch.Generator(device=self.device).manual_seed(
            seed + 7919 * self.dp.rank
        )

    def _setup_scale(self, shard: int | None, context: int) -> None:
        """FSDP2 (``shard``: ranks per shard group, 0 all; None off) or context parallelism over
        ``context`` ranks (:mod:`flashcore.torch.shard`); nothing on one process."""
        self.sharded, self.context = False, None
        if shard is None and context == 1:
            return
        layout = scale.plan(self.dp, shard=shard, context=context)  # context > world: refused
        if self.dp.world == 1:
            return
        if layout.shard:
            self._loss = scale.fully_shard_lm(_Loss(self.model), self.model, layout, self.device)
            self.sharded = True
            self.workers_note += f", parameters sharded over {layout.shard} (FSDP2)"
        else:
            self.context = scale.ContextParallel(layout, self.device)
            self.workers = layout.data
            self.workers_note = (
                f"{self.dp.world} processes (torchrun, {self.dp.backend}): {layout.data} data x "
                f"{layout.context} context"
            )

    def _autocast(self):
        if self.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.int64), device=self.device)

    def _bool(self, a: np.ndarray | None, rows) -> torch.Tensor | None:
        """A (b, t) bool loss mask's ``rows`` as a tensor (None stays None)."""
        m = loss_mask_rows(a, rows)
        return None if m is None else torch.as_tensor(m, device=self.device)

    def train_step(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        lr: float,
        loss_mask: np.ndarray | None = None,
    ) -> float:
        if self.context is not None:
            return self.context.train_step(self, inputs, targets, lr, loss_mask)
        check_split(len(inputs), self.workers, self.workers_note)
        mine = parallel.rows(len(inputs), self.dp)  # this rank's rows of the global batch
        x, y = np.asarray(inputs)[mine], np.asarray(targets)[mine]  # (b / workers, t)
        m = loss_mask_rows(loss_mask, mine)  # (b / workers, t) or None
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._accumulate(x, y, m)
        clip = self._clip_norm()
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.workers == 1:
            return loss
        (total,) = parallel.all_sum([loss], self.dp)
        # equal rows per rank: the mean of the means (with a loss mask, the mean over the counted
        # positions when every row counts as many, as flashcore.mlm.mask_tokens's rows do)
        return total / self.workers

    def _clip_norm(self) -> float:
        """The clipping norm (inf when ``grad_clip`` is 0: the norm is measured, nothing clipped)."""
        clip = self.optim_config.grad_clip
        return clip if clip > 0 else float("inf")

    def _accumulate(self, x: np.ndarray, y: np.ndarray, m: np.ndarray | None) -> float:
        """Forward and backward of this rank's rows (b / workers, t) in ``grad_accum``
        micro-batches, each loss weighted by its share of the counted positions
        (:func:`flashcore.runtime.micro_weights`), so that the summed gradient is the one of the
        mean over all the rows. Under DDP the gradients are all-reduced in the last micro-batch's
        backward only (``no_sync`` before). -> the rows' mean loss."""
        parts = micro_batches(len(x), self.grad_accum)
        weights = micro_weights(y, m, parts)
        total = 0.0
        for k, (rows, w) in enumerate(zip(parts, weights)):
            # DDP only (FSDP2 reduce-scatters each micro-batch's gradients: summed all the same)
            defer = isinstance(self._loss, DistributedDataParallel) and k < len(parts) - 1
            with self._loss.no_sync() if defer else contextlib.nullcontext():
                with self._autocast():
                    loss = self._loss(
                        self._tensor(x[rows]), self._tensor(y[rows]), loss_mask=self._bool(m, rows)
                    )
                (loss * float(w) if len(parts) > 1 else loss).backward()
            total += float(loss.detach()) * float(w)
        return total

    @torch.no_grad()
    def eval_loss(
        self, inputs: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray | None = None
    ) -> tuple[float, int]:
        if self.context is not None:
            return self.context.eval_loss(self, inputs, targets, loss_mask)
        if self.sharded:
            return scale.sharded_eval_loss(self, inputs, targets, loss_mask)
        mine = parallel.rows(len(targets), self.dp)
        x, y = np.asarray(inputs)[mine], np.asarray(targets)[mine]
        m = self._bool(loss_mask, mine)
        total, n = 0.0, counted_positions(y, loss_mask_rows(loss_mask, mine))
        if n:
            self.model.eval()
            with self._autocast():
                loss = self.model.loss(self._tensor(x), self._tensor(y), loss_mask=m)
                total = float(loss) * n
        if self.workers == 1:
            return total, n
        total, count = parallel.all_sum([total, n], self.dp)
        return total, int(count)

    def close(self) -> None:
        parallel.leave(self.dp)

    def params(self) -> dict[str, np.ndarray]:
        if self.sharded:  # gathered from the shards: every rank calls it
            return scale.canonical_numpy(self.model)
        return {k: np.asarray(v, np.float32) for k, v in self.model.to_canonical().items()}

    def _canonical_slots(self):
        """(canonical name, parameter, transpose) for every parameter."""
        native = dict(self.model.named_parameters())
        for name, (native_name, transpose) in self.model.naming.items():
            yield name, native[native_name], transpose

    def optimizer_state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        step = 0
        for name, p, transpose in self._canonical_slots():
            st = self.optimizer.state.get(p, {})
            for key, slot in (("exp_avg", "m"), ("exp_avg_sq", "v")):
                t = scale.full(st.get(key, torch.zeros_like(p)))  # sharded: gathered
                t = t.mT if transpose else t
                out[f"{slot}.{name}"] = t.detach().float().cpu().numpy().copy()
            step = max(step, int(st.get("step", 0)))
        out["step"] = np.asarray(step, np.int64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        step = int(np.asarray(state["step"]))
        staged = []
        for name, p, transpose in self._canonical_slots():
            m = torch.as_tensor(np.asarray(state[f"m.{name}"]), dtype=p.dtype, device=p.device)
            v = torch.as_tensor(np.asarray(state[f"v.{name}"]), dtype=p.dtype, device=p.device)
            m, v = (m.mT, v.mT) if transpose else (m, v)
            if m.shape != p.shape or v.shape != p.shape:
                raise ValueError(
                    f"optimizer state for {name}: shape {tuple(m.shape)} != {tuple(p.shape)}"
                )
            staged.append((p, m.contiguous(), v.contiguous()))
        staged = [(p, scale.like(p, m), scale.like(p, v)) for p, m, v in staged]  # sharded: split
        for p, m, v in staged:
            self.optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": m,
                "exp_avg_sq": v,
            }

    def _generate(self, prompt, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`): the LM's, in eval mode
        under the engine's autocast -> NumPy."""
        self.model.eval()
        with self._autocast():
            out = self.model.generate(prompt, max_new_tokens, seed=seed, lengths=lengths, **sampler)
        return out.cpu().numpy()
