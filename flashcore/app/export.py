"""``flashcore export RUN DST``: a training run -> a Hugging Face pretrained directory, or a
deployment export.

    flashcore export RUN DST [--force]
    flashcore export RUN DST --format onnx|stablehlo|savedmodel [--mask] [--dtype D] [--force]

With ``--format`` (docs/deployment.md), RUN may also be any canonical weight file (a layer or
an LM) and DST becomes the folder of :func:`flashcore.deploy.export`: the model with a dynamic
batch and length as ONNX (the ``[export]`` extra), StableHLO (``[jax]``) or a TensorFlow
SavedModel (``[jax,tf]``), inputs ``tokens`` (LM) or ``x`` (layer), plus ``mask`` with
``--mask``; atomic as below. The rest of this page is the Hugging Face folder (the default,
``--format hf``).

RUN is a ``flashcore train`` run folder (its ``model.safetensors``: canonical weights with the
config and the training metadata) or such a file itself. DST becomes a folder holding
``config.json`` (``model_type`` "flashcore", the LM config under ``flashcore``),
``generation_config.json`` (causal LMs), ``model.safetensors``, a byte copy of the run's weight
file, so nothing is converted or rounded, and the tokenizer (``tokenizer.json``,
``tokenizer_config.json``): the run's own (``RUN/tokenizer.json``, checked against the
checkpoint's hash) or, for a byte-level LM, the byte tokenizer (a masked LM's ``[MASK]`` is its
last id). It loads with ``AutoModelForCausalLM`` / ``AutoModelForMaskedLM.from_pretrained(DST)``,
``AutoTokenizer.from_pretrained(DST)`` and ``pipeline("text-generation" | "fill-mask", model=DST)``
(after ``import flashcore.torch.hf``), and with ``flashcore.{torch,jax,tf}.LM.from_pretrained(DST)``.

Atomic: everything is written into a temporary folder next to DST, checked by loading it back,
fsynced, then renamed to DST. A failed export leaves no DST; an existing DST is an error unless
``--force``, which replaces it only once the new folder is complete. Needs the ``[hf]`` extra
(transformers writes config.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from flashcore.deploy import ExportError  # a bad source, an existing DST, a missing extra

from .runstate import fsync_dir, fsync_file

__all__ = ["main", "export", "deploy_export"]

WEIGHTS_NAME = "model.safetensors"


def _source_file(run: Path) -> Path:
    """The canonical weight file of a run folder (its newest complete checkpoint's), or the file
    given."""
    from .evaluate import resolve_model

    path = resolve_model(run)
    if not path.is_file():
        where = f"{run} holds no {WEIGHTS_NAME}" if run.is_dir() else f"no run folder or file {run}"
        raise FileNotFoundError(where)
    return path


def _write_folder(folder: Path, source: Path, config) -> None:
    """config.json, generation_config.json and a byte copy of the weight file into ``folder``."""
    try:
        from transformers import GenerationConfig

        from flashcore.torch import hf
    except ImportError as err:
        raise ExportError(
            f"flashcore export needs the Hugging Face extra (pip install 'flashcore[hf]'): {err}"
        ) from err
    from .evaluate import model_tokenizer_file

    tokenizer = model_tokenizer_file(source, config)  # the run's, checked; None: bytes
    shutil.copyfile(source, folder / WEIGHTS_NAME)
    hf_config = hf.FlashcoreConfig.from_lm_config(config)
    causal = config.block.causal
    model = hf.FlashcoreForCausalLM if causal else hf.FlashcoreForMaskedLM
    hf_config.architectures = [model.__name__]
    hf_config.save_pretrained(folder)
    if causal:
        GenerationConfig.from_model_config(hf_config).save_pretrained(folder)
    if tokenizer is not None or hf.is_byte_vocabulary(config):
        hf.save_tokenizer(folder, config, tokenizer)
    for path in folder.iterdir():
        fsync_file(path)
    fsync_dir(folder)


def export(run: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the pretrained directory ``dst`` from the run ``run``; returns ``dst``.

    Raises FileNotFoundError / WeightFileError for a missing or unusable source, ExportError for
    an existing ``dst`` without ``force`` or a missing extra. Nothing is left at ``dst`` (nor in
    its parent) when it fails; with ``force`` the old ``dst`` stays until the new one is complete.
    """
    from flashcore import deploy, io, pretrained
    from flashcore.config import LMConfig

    run, dst = Path(run), Path(dst)
    source = _source_file(run)
    _, config = io.load(source)  # every name and shape checked against the stored config
    if not isinstance(config, LMConfig):
        raise io.WeightFileError(f"{source}: holds a {type(config).__name__}, not a language model")
    tmp = deploy.staging_folder(dst, force)
    try:
        _write_folder(tmp, source, config)
        pretrained.load(tmp)  # the folder as a reader sees it: weights and config.json agree
        deploy.replace_folder(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def deploy_export(
    run: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str,
    *,
    mask: bool = False,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """The deployment export ``fmt`` (:data:`flashcore.deploy.FORMATS`) of the weights of
    ``run`` (a run folder or any canonical weight file) into the folder ``dst``; returns it.
    Raises ExportError (an unknown format, a missing extra, an existing ``dst``), FileNotFoundError
    or WeightFileError; nothing is left at ``dst`` when it fails."""
    from flashcore import deploy, io

    if fmt not in deploy.FORMATS:  # before reading anything
        raise ExportError(f"unknown export format {fmt!r}; choose one of {FORMAT_CHOICES}")
    deploy.FORMATS[fmt].function("write")  # a missing extra is named before any work
    source = _source_file(Path(run))
    params, config = io.load(source)
    names = deploy.input_names(config, mask=mask)
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    try:
        return deploy.export(fmt, params, config, dst, inputs=names, dtype=dtype, force=force)
    except deploy.ExportError as err:
        raise ExportError(str(err)) from None


FORMAT_CHOICES = ["hf", "onnx", "stablehlo", "savedmodel"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flashcore export",
        description="A flashcore train run -> a Hugging Face pretrained directory "
        "(config.json + canonical model.safetensors), or with --format a deployment export "
        "(ONNX, StableHLO, SavedModel) with a dynamic batch and length (docs/deployment.md).",
    )
    ap.add_argument("run", type=Path, help="a run folder (or its model.safetensors)")
    ap.add_argument("dst", type=Path, help="the folder to create")
    ap.add_argument(
        "--format",
        default="hf",
        metavar="FORMAT",
        help=f"one of {', '.join(FORMAT_CHOICES)} (default: hf, a Hugging Face folder)",
    )
    ap.add_argument(
        "--mask", action="store_true", help="deployment exports: add a (b, t) bool input 'mask'"
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="deployment exports: the weights' and activations' dtype (default float32)",
    )
    ap.add_argument("--force", action="store_true", help="replace an existing DST")
    return ap


def main(argv: list[str] | None = None) -> int:
    from flashcore.io import WeightFileError

    args = parser().parse_args(argv)
    try:
        if args.format == "hf":
            dst = export(args.run, args.dst, force=args.force)
        else:
            dst = deploy_export(
                args.run, args.dst, args.format, mask=args.mask, dtype=args.dtype, force=args.force
            )
    except (ValueError, WeightFileError, FileNotFoundError, OSError) as err:  # DataError too
        print(f"flashcore export: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run} -> {dst} ({', '.join(sorted(p.name for p in dst.iterdir()))})")
    return 0
