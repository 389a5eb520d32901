"""Golden reference files: one ``golden/<case>.npz`` per case, float64.

Keys: ``config`` (JSON), ``input/<name>`` (x or tokens/targets, mask, segment_ids, cotangent,
``dropout/<site>`` keep-masks in dropout cases, ``token_type_ids`` in LMs with token types),
``param/<canonical name>``, ``output`` ((b, t, d) layer output or (b, t, v) LM logits), ``loss``
(scalar: sum(output * cotangent) for layers, mean next-token cross-entropy for LMs),
``grad/x`` (layers) and ``grad/param/<canonical name>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import flashcore as fc

from .cases import Case, case_by_name

__all__ = ["GOLDEN_DIR", "Golden", "load", "save", "spec_loss", "spec_output", "fd_check"]

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@dataclass
class Golden:
    """A golden case as loaded: the config, inputs, weights and the expected results (float64)."""

    name: str
    config: fc.FlashConfig | fc.TransformerConfig | fc.LMConfig
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    output: np.ndarray
    loss: float
    grads: dict[str, np.ndarray]  # "x" and "param/<name>"

    @property
    def kind(self) -> str:
        return "lm" if isinstance(self.config, fc.LMConfig) else self.config.kind

    @property
    def case(self) -> Case:
        return case_by_name(self.name)


def path_for(name: str, directory: Path | None = None) -> Path:
    return (directory or GOLDEN_DIR) / f"{name}.npz"


def save(g: Golden, directory: Path | None = None) -> Path:
    arrays = {"config": np.array(json.dumps(g.config.to_dict(), sort_keys=True))}
    arrays.update({f"input/{k}": v for k, v in g.inputs.items()})
    arrays.update({f"param/{k}": v for k, v in g.params.items()})
    arrays["output"] = g.output
    arrays["loss"] = np.array(g.loss)
    arrays.update({f"grad/{k}": v for k, v in g.grads.items()})
    path = path_for(g.name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load(name: str, directory: Path | None = None) -> Golden:
    path = path_for(name, directory)
    if not path.exists():
        raise FileNotFoundError(
            f"golden file {path} is missing; regenerate with `python -m flashcore.conformance.generate`"
        )
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    cfg = fc.config_from_dict(json.loads(str(data["config"])))
    pick = lambda pre: {k[len(pre) :]: v for k, v in data.items() if k.startswith(pre)}  # noqa: E731
    return Golden(
        name=name,
        config=cfg,
        inputs=pick("input/"),
        params=pick("param/"),
        output=data["output"],
        loss=float(data["loss"]),
        grads=pick("grad/"),
    )


def dropout_masks(inputs: dict) -> dict | None:
    """The keep-masks of a case, {site: bool array} from its ``dropout/<site>`` inputs, or None."""
    pre = "dropout/"
    masks = {k[len(pre) :]: v for k, v in inputs.items() if k.startswith(pre)}
    return masks or None


def _spec_kw(inputs, xp) -> dict:
    return dict(
        mask=inputs.get("mask"),
        segment_ids=inputs.get("segment_ids"),
        xp=xp,
        dropout=dropout_masks(inputs),
    )


def spec_output(config, params, inputs, xp=None):
    """The spec's output for a case: layer output (b, t, d) or LM logits (b, t, v)."""
    kw = _spec_kw(inputs, xp)
    if isinstance(config, fc.LMConfig):
        types = inputs.get("token_type_ids")
        return fc.lm_logits(params, inputs["tokens"], config=config, token_type_ids=types, **kw)
    return fc.block_fn(config)(params, inputs["x"], config=config, **kw)


def spec_loss(config, params, inputs, xp=None):
    """The scalar loss whose gradients the golden files hold."""
    kw = _spec_kw(inputs, xp)
    if isinstance(config, fc.LMConfig):
        types = inputs.get("token_type_ids")
        return fc.lm_loss(
            params, inputs["tokens"], inputs["targets"], config=config, token_type_ids=types, **kw
        )
    out = fc.block_fn(config)(params, inputs["x"], config=config, **kw)
    ns = xp if xp is not None else None
    if ns is None:
        import array_api_compat

        ns = array_api_compat.array_namespace(out)
    return ns.sum(out * inputs["cotangent"])


def fd_check(g: Golden, eps: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """Check every gradient of ``g`` against float64 central finite differences of the NumPy spec.

    For each gradient tensor, one random direction u: compares <grad, u> with
    (L(theta + eps u) - L(theta - eps u)) / (2 eps). Returns name -> relative error.
    """
    rng = np.random.default_rng(seed)
    errors = {}
    for key, grad in g.grads.items():
        u = rng.normal(size=grad.shape)

        def loss_at(sign: float, key=key, u=u) -> float:
            params = dict(g.params)
            inputs = dict(g.inputs)
            if key == "x":
                inputs["x"] = inputs["x"] + sign * eps * u
            else:
                name = key[len("param/") :]
                params[name] = params[name] + sign * eps * u
            return float(spec_loss(g.config, params, inputs))

        fd = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
        ad = float(np.sum(grad * u))
        errors[key] = abs(fd - ad) / max(abs(ad), abs(fd), 1e-3)
    return errors
