"""Weight conversion between canonical, torch, Flax, Keras, flash-pytorch and GAU-alpha files.

    convert(src, dst, *, src_format=None, dst_format=None, config=None, force=False, **peer)
    read_weights(path, fmt=None, *, config=None, **peer) -> (params, config)
    write_weights(path, params, config, fmt=None, *, force=False) -> Path
    detect_format(path) -> format name

Everything goes through canonical NumPy weights (canonical names, kernels ``[in, out]``, each
array in its stored dtype, bfloat16 via ml_dtypes) and each backend's explicit naming table: no
name is guessed, no tensor is reshaped, and a missing, unexpected or misshapen tensor is an error
listing the names. A format's framework is imported only when that format is used.

    canonical      .safetensors   flashcore.io (config and format version in the metadata)
    torch          .pt / .pth     flashcore.torch.io (state_dict + config; a bare state dict
                                  needs ``config=``, on the command line ``--config``)
    flax           .msgpack       flashcore.jax.io (Flax msgpack of the nnx parameter tree)
    keras          .weights.h5    flashcore.tf.io (Keras save_weights + config attributes)
    flash-pytorch  (read only)    flashcore.peers.flash_pytorch (needs ``model``, ``causal``
                                  and the importer's other options; never detected alone)
    gau-alpha      (read only)    flashcore.peers.gau_alpha: a GAU-alpha folder (config.json +
                                  model.safetensors / pytorch_model.bin), one of those files, or
                                  a bert4keras TF1 checkpoint (prefix or folder); never detected

The source format is read from the file (magic bytes and stored tags first, the suffix second)
unless given; a given format that the file contradicts is an error. The destination format comes
from its suffix unless given. Writing is atomic (a temporary file in the destination's folder,
then a rename): a failed conversion leaves no destination and no temporary file, and an existing
destination is never replaced unless ``force=True`` (``--force``). The source's metadata beside its
config (a run checkpoint's step, corpus, corpus_sha256, train_loss) goes with the weights into
every writable format (flash-pytorch files carry none).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..config import FlashConfig, LMConfig, TransformerConfig, config_from_dict
from ..io import WeightFileError

__all__ = ["FORMATS", "Format", "convert", "read_weights", "write_weights", "detect_format", "main"]

AnyConfig = FlashConfig | TransformerConfig | LMConfig


@dataclasses.dataclass(frozen=True)
class Format:
    """A weight file format: its suffixes, the module that reads / writes it, its framework."""

    name: str
    suffixes: tuple[str, ...]
    module: str | None  # a backend io module (read_params / write_params), imported on use
    framework: str  # what the format needs installed, for error messages
    writable: bool = True


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("canonical", (".safetensors",), None, "safetensors"),
        Format("torch", (".pt", ".pth"), "flashcore.torch.io", "torch (flashcore[torch])"),
        Format("flax", (".msgpack",), "flashcore.jax.io", "jax + flax (flashcore[jax])"),
        Format("keras", (".weights.h5",), "flashcore.tf.io", "tensorflow (flashcore[tf])"),
        Format("flash-pytorch", (), None, "torch (flashcore[torch])", writable=False),
        Format(
            "gau-alpha", (), None, "torch or safetensors (bert4keras: tensorflow)", writable=False
        ),
    ]
}

PEER_OPTIONS = (
    "model",
    "causal",
    "group_size",
    "shift_tokens",
    "laplace_attn_fn",
    "reduce_group_non_causal_attn",
)

_HDF5 = b"\x89HDF\r\n\x1a\n"


def _format_list() -> str:
    return ", ".join(
        f"{f.name} ({' / '.join(f.suffixes) or 'by --from only'})" for f in FORMATS.values()
    )


def _backend(fmt: Format):
    try:
        return importlib.import_module(fmt.module)
    except ImportError as err:
        raise WeightFileError(f"the {fmt.name} format needs {fmt.framework}: {err}") from err


# ---- detection -------------------------------------------------------------------------------
def _sniff(path: Path) -> str | None:
    """What the bytes say: a format name, "torch-bare" (a torch file without a flashcore tag),
    "flash-pytorch-like", "torch-no-tensors", "keras-archive", or None (nothing recognised)."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
                if pkl:
                    data = z.read(pkl[0])
                    if b"flashcore-torch" in data:
                        return "torch"
                    if b"_rebuild_tensor" not in data:
                        return "torch-no-tensors"
                    if b"q_scaleoffset" in data:
                        return "gau-alpha-like"
                    return "flash-pytorch-like" if b"to_hidden" in data else "torch-bare"
                if "model.weights.h5" in names or "config.json" in names:
                    return "keras-archive"
        except (zipfile.BadZipFile, OSError, KeyError):
            return None
        return None
    if head.startswith(_HDF5):
        return "keras"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8:
            return "canonical"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-bare"  # a legacy (non-zip) torch.save pickle
    if head[:1] and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "flax"  # a msgpack map
    return None


def _by_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for f in FORMATS.values():
        if any(name.endswith(s) for s in f.suffixes):
            return f.name
    return None


def detect_format(path: str | os.PathLike, *, config: AnyConfig | None = None) -> str:
    """The format of an existing weight file, from its bytes first and its suffix second.

    A torch file without a flashcore tag is a bare state dict: it is "torch" when ``config`` is
    given; otherwise (it might equally be a flash-pytorch checkpoint) an error says what to add.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    sniffed = _sniff(path)
    if sniffed == "keras-archive":
        raise WeightFileError(
            f"{path}: a Keras .keras archive, which flashcore does not read; save the layer's "
            "weights with flashcore.tf.io.save(path.weights.h5, layer)"
        )
    if sniffed == "torch-no-tensors":
        raise WeightFileError(f"{path}: not a weight file (a torch file that holds no tensors)")
    if sniffed == "flash-pytorch-like" and config is None:
        raise WeightFileError(
            f"{path}: a torch state dict with flash-pytorch names and no flashcore config; "
            "convert it with --from flash-pytorch --model FLASH|GAU|FLASHTransformer "
            "--causal|--no-causal [--group-size N]"
        )
    if sniffed == "gau-alpha-like" and config is None:
        raise WeightFileError(
            f"{path}: a torch state dict with GAU-alpha names and no flashcore config; "
            "convert it with --from gau-alpha"
        )
    if sniffed in ("torch-bare", "flash-pytorch-like", "gau-alpha-like"):
        if config is None:
            raise WeightFileError(
                f"{path}: a bare torch state dict with no flashcore config; give --config "
                "config.json (a JSON of config.to_dict()) for flashcore.torch names, or "
                "--from flash-pytorch --model ... for a flash-pytorch checkpoint"
            )
        return "torch"
    if sniffed is not None:
        return sniffed
    by_suffix = _by_suffix(path)
    if by_suffix is not None:
        return by_suffix
    raise WeightFileError(
        f"{path}: cannot tell its format from its contents or its name; give --from, one of "
        f"{_format_list()}"
    )


def _check_given_format(path: Path, fmt: str) -> None:
    """A format given explicitly must not contradict what the bytes say."""
    sniffed = _sniff(path)
    ok = {
        None: True,
        "torch-bare": fmt in ("torch", "flash-pytorch", "gau-alpha"),
        "flash-pytorch-like": fmt in ("torch", "flash-pytorch"),
        "gau-alpha-like": fmt in ("torch", "gau-alpha"),
        "canonical": fmt in ("canonical", "gau-alpha"),  # a Hugging Face model.safetensors
        "keras-archive": False,
        "torch-no-tensors": False,
    }.get(sniffed, sniffed == fmt)
    if not ok:
        looks = {
            "keras-archive": "a Keras .keras archive",
            "torch-no-tensors": "a torch file holding no tensors",
        }
        raise WeightFileError(
            f"{path}: --from {fmt} given, but the file is {looks.get(sniffed, sniffed)} "
            "(its bytes say so); drop --from or give the right format"
        )


def _get_format(name: str) -> Format:
    if name not in FORMATS:
        raise WeightFileError(f"unknown format {name!r}; formats: {_format_list()}")
    return FORMATS[name]


# ---- reading and writing ---------------------------------------------------------------------
def _read_torch_state_dict(path: Path) -> dict:
    """A ``torch.save``-d state dict (a dict of tensors), read with ``weights_only=True``."""
    try:
        import torch
    except ImportError as err:
        raise WeightFileError(f"{path}: a torch state dict needs torch: {err}") from err
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightFileError(
            f"{path}: not a readable torch file (truncated or corrupt?): {str(err)[:300]}"
        ) from err
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightFileError(f"{path}: not a state dict (a dict of tensors)")
    return sd


def _read_flash_pytorch(path: Path, peer: dict) -> tuple[dict[str, np.ndarray], AnyConfig]:
    from ..peers.flash_pytorch import import_state_dict

    if peer.get("model") is None or peer.get("causal") is None:
        raise WeightFileError(
            f"{path}: a flash-pytorch state dict holds no config; give --model "
            "FLASH|GAU|FLASHTransformer and --causal or --no-causal (and --group-size if not 256)"
        )
    sd = _read_torch_state_dict(path)
    options = {k: v for k, v in peer.items() if v is not None}
    try:
        return import_state_dict(sd, options.pop("model"), **options)
    except (ValueError, KeyError) as err:
        raise WeightFileError(f"{path}: {err}") from err


GAU_ALPHA_FILES = ("model.safetensors", "pytorch_model.bin")


def _tf_checkpoint(path: Path) -> Path | None:
    """The TF checkpoint prefix at ``path`` (a prefix with a ``.index`` file, or a folder holding
    one), or None."""
    if Path(str(path) + ".index").is_file():
        return path
    if path.is_dir():
        index = sorted(path.glob("*.ckpt.index")) or sorted(path.glob("*.index"))
        if index:
            return Path(str(index[0])[: -len(".index")])
    return None


def _read_gau_alpha(path: Path) -> tuple[dict[str, np.ndarray], AnyConfig]:
    """A GAU-alpha checkpoint: a Hugging Face folder (config.json + model.safetensors or
    pytorch_model.bin, as ``junnyu/chinese_GAU-alpha-char_L-24_H-768`` has), one of those files
    (its folder's config.json is read when there), or a bert4keras TF1 checkpoint (its prefix, or
    a folder with bert_config.json + bert_model.ckpt.*)."""
    from ..peers.gau_alpha import (
        GAUAlphaImportError,
        import_bert4keras,
        import_state_dict,
        read_hf_config,
    )

    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else None
    if path.is_dir():
        weights = next((folder / n for n in GAU_ALPHA_FILES if (folder / n).is_file()), None)
    ckpt = None if weights is not None else _tf_checkpoint(path)
    if weights is None and ckpt is None:
        raise FileNotFoundError(
            f"{path}: no GAU-alpha checkpoint there (expected a folder with "
            f"{' or '.join(GAU_ALPHA_FILES)} or a bert4keras bert_model.ckpt, or one of those files)"
        )
    try:
        config = read_hf_config(folder)
        if ckpt is not None:
            return import_bert4keras(_backend(FORMATS["keras"]).read_checkpoint(ckpt), config)
        if weights.name.endswith(".safetensors"):
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(weights), framework="np") as f:
                    sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            except (SafetensorError, OSError, ValueError) as err:
                raise WeightFileError(f"{weights}: not a readable safetensors file: {err}") from err
        else:
            sd = _read_torch_state_dict(weights)
        return import_state_dict(sd, config)
    except GAUAlphaImportError as err:
        raise WeightFileError(f"{path}: {err}") from err


def read_weights(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    config: AnyConfig | None = None,
    **peer,
) -> tuple[dict[str, np.ndarray], AnyConfig]:
    """Any supported weight file -> (canonical NumPy weights, config).

    ``fmt``: a name of :data:`FORMATS` (None: detected). ``config``: required for a bare torch
    state dict; for a tagged file it must equal the stored config. ``peer``: the flash-pytorch
    importer's options (``model``, ``causal``, ``group_size``, ...).
    """
    path = Path(path)
    if fmt == "gau-alpha":  # a folder or a TF checkpoint prefix as well as a file
        if config is not None:
            raise WeightFileError("gau-alpha: the importer derives the config; drop --config")
        if any(v is not None for v in peer.values()):
            raise WeightFileError("--model / --causal / ... apply to --from flash-pytorch")
        if path.is_file():
            _check_given_format(path, fmt)
        return _read_gau_alpha(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    if fmt is None:
        fmt = detect_format(path, config=config)
    else:
        _get_format(fmt)
        _check_given_format(path, fmt)
    unknown = sorted(set(peer) - set(PEER_OPTIONS))
    if unknown:
        raise TypeError(f"unknown flash-pytorch options {unknown}; known: {list(PEER_OPTIONS)}")
    if fmt == "flash-pytorch":
        if config is not None:
            raise WeightFileError("flash-pytorch: the importer derives the config; drop --config")
        return _read_flash_pytorch(path, peer)
    if any(v is not None for v in peer.values()):
        raise WeightFileError(f"--model / --causal / ... apply to --from flash-pytorch, not {fmt}")
    if fmt == "canonical":
        from ..io import load

        return load(path, config)
    backend = _backend(FORMATS[fmt])
    if fmt == "torch":
        return backend.read_params(path, config=config)
    params, stored = backend.read_params(path)
    if config is not None and config != stored:
        raise WeightFileError(f"{path}: holds weights for {stored!r}, not for {config!r}")
    return params, stored


def _dst_format(path: Path, fmt: str | None) -> Format:
    if fmt is None:
        fmt = _by_suffix(path)
        if fmt is None:
            raise WeightFileError(
                f"{path}: cannot tell the output format from the name; give --to, one of "
                f"{_format_list()}"
            )
    f = _get_format(fmt)
    if not f.writable:
        raise WeightFileError(
            f"writing the {fmt} format is not supported (it is import only); "
            "convert to canonical, torch, flax or keras"
        )
    if fmt == "keras" and not path.name.endswith(".weights.h5"):
        raise WeightFileError(f"{path}: Keras weights files must be named *.weights.h5")
    return f


def write_weights(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    config: AnyConfig,
    fmt: str | None = None,
    *,
    force: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """Canonical weights -> a file in format ``fmt`` (None: from the suffix), atomically.

    An existing ``path`` is kept (FileExistsError) unless ``force``. ``extra``: metadata strings
    stored beside the config (e.g. a run checkpoint's step, corpus, train_loss), in any format.
    """
    path = Path(path)
    f = _dst_format(path, fmt)
    if path.exists() and not force:
        raise FileExistsError(_exists(path))
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder")
    if f.name == "canonical":
        from ..io import save

        return save(path, params, config, extra=extra)
    backend = _backend(f)
    try:
        return backend.write_params(path, params, config, extra=extra)
    except ValueError as err:
        if isinstance(err, WeightFileError):
            raise
        raise WeightFileError(f"{path}: cannot write the {f.name} format: {err}") from err


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    src_format: str | None = None,
    dst_format: str | None = None,
    config: AnyConfig | None = None,
    force: bool = False,
    **peer,
) -> tuple[Path, str, str]:
    """Convert the weight file ``src`` to ``dst`` -> (dst, source format, destination format).

    The destination is checked (format, overwrite) before the source is read, and written only
    from complete, checked canonical weights.
    """
    src, dst = Path(src), Path(dst)
    out = _dst_format(dst, dst_format)
    if dst.exists() and not force:
        raise FileExistsError(_exists(dst))
    fmt = src_format or detect_format(src, config=config)
    params, cfg = read_weights(src, fmt, config=config, **peer)
    extra = training_metadata(src, fmt)
    write_weights(dst, params, cfg, out.name, force=force, extra=extra or None)
    return dst, fmt, out.name


def _exists(path: Path) -> str:
    return f"{path} exists; pass --force to replace it"


def training_metadata(path: str | os.PathLike, fmt: str = "canonical") -> dict[str, str]:
    """The metadata a weight file of format ``fmt`` carries beside its format and config (a run
    checkpoint's step, corpus, corpus_sha256, train_loss), which ``convert`` copies along."""
    if fmt == "canonical":
        from ..io import read_header

        meta = read_header(path)
        return {k: v for k, v in meta.items() if k not in ("format", "format_version", "config")}
    module = FORMATS[fmt].module
    return _backend(FORMATS[fmt]).read_extra(path) if module else {}


# ---- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashcore convert",
        description="Convert FLASH / GAU / Transformer++ / LM weights between formats: "
        + _format_list(),
    )
    p.add_argument("src", help="the weight file to read")
    p.add_argument("dst", help="the file to write (never replaced unless --force)")
    p.add_argument("--from", dest="src_format", choices=list(FORMATS), help="default: detected")
    p.add_argument("--to", dest="dst_format", choices=list(FORMATS), help="default: by suffix")
    p.add_argument("--config", help="config JSON (config.to_dict()) for a bare torch state dict")
    p.add_argument("--force", action="store_true", help="replace an existing DST")
    g = p.add_argument_group("flash-pytorch checkpoints (--from flash-pytorch)")
    g.add_argument("--model", choices=["FLASH", "GAU", "FLASHTransformer"])
    g.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--group-size", type=int, default=None)
    g.add_argument("--shift-tokens", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--laplace-attn-fn", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument(
        "--reduce-group-non-causal-attn", action=argparse.BooleanOptionalAction, default=None
    )
    return p


def _load_config_json(path: str) -> AnyConfig:
    try:
        return config_from_dict(json.loads(Path(path).read_text()))
    except OSError as err:
        raise WeightFileError(f"--config {path}: unreadable: {err}") from err
    except (ValueError, TypeError, KeyError) as err:
        raise WeightFileError(
            f"--config {path}: not a flashcore config JSON (config.to_dict()): {err}"
        ) from err


def main(argv: list[str] | None = None) -> int:
    """``flashcore convert SRC DST [--from F] [--to F] [--config JSON] [--force] [...]``; 0 on
    success, 2 (message on stderr) for a bad file, an existing DST or a failed write (as
    ``flashcore train`` / ``eval`` do; argparse also exits 2 on a bad argument)."""
    args = _parser().parse_args(argv)
    peer = {k: getattr(args, k) for k in PEER_OPTIONS}
    try:
        config = _load_config_json(args.config) if args.config else None
        dst, src_fmt, dst_fmt = convert(
            args.src,
            args.dst,
            src_format=args.src_format,
            dst_format=args.dst_format,
            config=config,
            force=args.force,
            **peer,
        )
    except (WeightFileError, OSError) as err:  # bad file, no file, DST exists, write failed
        print(f"flashcore convert: error: {err}", file=sys.stderr)
        return 2  # as flashcore train / eval do for a bad file or argument
    print(f"wrote {dst} ({src_fmt} -> {dst_fmt})")
    return 0
