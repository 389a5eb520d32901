"""Import GAU-alpha checkpoints (ZhuiyiTechnology's bert4keras release and its Hugging Face port,
the ``gau-alpha`` 0.0.3 package) into canonical weights and an :class:`~flashcore.LMConfig`.

    import_state_dict(state_dict, config=None)  -> (params, config)   # the port's state_dict
    import_bert4keras(variables, config=None)   -> (params, config)   # a TF1 checkpoint's
    read_hf_config(folder)                      -> its config.json as a dict (or None)
    read_vocab(folder)                          -> list of tokens      # its vocab.txt

This module is NumPy only. Files are read by ``flashcore.app.convert.read_weights(path,
"gau-alpha")`` (``flashcore convert --from gau-alpha``): a downloaded folder, its weight file or
a bert4keras checkpoint (read by ``flashcore.tf.io.read_checkpoint``).

The model is a bidirectional masked LM of GAU layers. Every way GAU-alpha differs from the paper's
GAU is a spec option, not a special case here:

| GAU-alpha                                                   | flashcore config                       |
|---|---|
| post-norm: ``h = Norm(x + GAU(x))``, no norm before the GAU | ``norm_position="post"``                |
| ``Norm``: ``x / sqrt(mean(x^2) + 1e-12)``, no weights        | ``norm="rms", norm_affine=False, norm_eps=1e-12`` |
| dense layers and scale-offsets without biases (use_bias=False) | ``use_bias=False`` (True maps the biases) |
| ``softmax(a log(l) / log 512)``, ``a = Q K^T / sqrt(s)``, l = the row's unmasked keys, masked keys at -1e4 | ``attention="softmax_plus"`` (l: ``length_mode="real"``; masked keys get weight 0) |
| RoPE on the pairs (x[2i], x[2i+1]), theta_i = 10000^(-2i/s), the rotated pairs written back as [all firsts, all seconds] | ``rope="interleaved"`` |
| no relative position bias                                   | ``rel_bias="none"``                     |
| embedding: ``Norm(word + token type)``                      | ``LMConfig(type_vocab_size=2, embed_norm="rms")`` |
| no final norm (each layer ends in one)                      | ``final_norm="none"``                   |
| MLM head: the word embedding transposed, no bias            | ``tie_embeddings=True, head_bias=False`` (an untied decoder: ``head.kernel``) |

Write-back of RoPE: the port rotates the pair (x[2i], x[2i+1]) by the angle of pair i exactly as
``rope="interleaved"`` does, but stores the rotated firsts in the first s/2 channels and the seconds
in the last s/2. Q and K get the same permutation of their s channels, and they meet only in
Q K^T, which no permutation of the shared axis changes: the outputs are those of
``rope="interleaved"`` (bert4keras itself writes the pairs back interleaved).

softmax_plus with a mask: the port fills masked scores with -1e4 before the scaling by
log(l) / log 512, so a masked key's weight is exp(-1e4 log(l) / log 512) relative, which is 0 in
float32 and float64 for l >= 2; flashcore gives it exactly 0. A row with one real key (l = 1:
log l = 0) is the exception: the port then spreads the row uniformly over every key, padding
included. Padded query positions: the port returns values there, flashcore returns 0 (compare real
positions). The port masks ``input_ids == pad_token_id`` (0) when no mask is given: pass
``mask = tokens != 0`` to flashcore for the same outputs.

bert4keras: the checkpoint's variables (``bert/embeddings/word_embeddings``,
``bert/embeddings/token_type_embeddings``, ``GAU_alpha/encoder/layer_{i}/gau/{i_dense,o_dense}/
kernel``, ``.../{q,k}_scaleoffset/gamma``) map onto the port's names. Current
bert4keras computes softmax_plus with l = max(l, 16) (its ``attention_normalize``); the port, and
so this import, uses l itself: the two agree on rows with at least 16 real keys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..config import FlashConfig, LMConfig
from ..params import check_params

__all__ = [
    "import_state_dict",
    "import_bert4keras",
    "read_vocab",
    "read_hf_config",
    "block_config",
    "LAYER_OPTIONS",
    "GAUAlphaImportError",
]

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_TF_LAYER = re.compile(r"^GAU_alpha/encoder/layer_(\d+)/gau/(.+)$")
_ACTIVATIONS = ("swish", "silu")


#: The FlashConfig options of GAU-alpha's layer besides its sizes (the table above); the
#: conformance suite's gau-alpha cases use them too.
LAYER_OPTIONS = dict(
    kind="gau",
    causal=False,
    attention="softmax_plus",
    rope="interleaved",
    rope_base=10000.0,
    rel_bias="none",
    norm="rms",
    norm_eps=1e-12,
    norm_position="post",
    norm_affine=False,
    use_bias=False,
)


class GAUAlphaImportError(ValueError):
    """A GAU-alpha checkpoint flashcore cannot import: missing, unexpected or misshapen tensors,
    or a configuration with no flashcore equivalent."""


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, without importing torch
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def _prefix(state_dict: Mapping) -> str:
    """'gau_alpha.' for GAUAlphaForMaskedLM's state dict, '' for GAUAlphaModel's."""
    return "gau_alpha." if any(k.startswith("gau_alpha.") for k in state_dict) else ""


def _hf_int(config: Mapping | None, key: str, found: int | None) -> int | None:
    if config is None or key not in config or config[key] is None:
        return found
    return int(config[key])


def _check_hf_config(config: Mapping) -> None:
    """GAUAlphaConfig fields with no flashcore equivalent -> GAUAlphaImportError."""
    bad = []
    if config.get("normalization", "softmax_plus") != "softmax_plus":
        bad.append(f"normalization={config['normalization']!r} (only 'softmax_plus')")
    if not config.get("attention_scale", True):
        bad.append("attention_scale=False (scores are always divided by sqrt(s))")
    act = config.get("hidden_act", "swish")
    if act not in _ACTIVATIONS:
        bad.append(f"hidden_act={act!r} (only swish / silu)")
    emb, hid = config.get("embedding_size"), config.get("hidden_size")
    if emb is not None and hid is not None and emb != hid:
        bad.append(f"embedding_size={emb} != hidden_size={hid}")
    if bad:
        raise GAUAlphaImportError("GAU-alpha config has no flashcore equivalent: " + "; ".join(bad))


def block_config(
    dim: int,
    intermediate: int,
    key_size: int,
    *,
    use_bias: bool = False,
    eps: float = 1e-12,
    max_len: int = 512,
    dropout: float = 0.0,
) -> FlashConfig:
    """The flashcore layer of GAU-alpha: d = ``dim``, e = ``intermediate``, s = ``key_size``
    (every option as in the module docstring's table)."""
    options = {**LAYER_OPTIONS, "norm_eps": eps, "use_bias": use_bias}
    return FlashConfig(
        dim=dim,
        expansion=intermediate / dim,
        qk_dim=key_size,
        max_len=max_len,
        dropout=dropout,
        **options,
    )


def import_state_dict(
    state_dict: Mapping, config: Mapping | None = None, *, dropout: float = 0.0
) -> tuple[dict[str, np.ndarray], LMConfig]:
    """A ``gau-alpha`` 0.0.3 state dict (``GAUAlphaForMaskedLM`` or ``GAUAlphaModel``) -> (canonical
    params as NumPy arrays, the bidirectional GAU masked-LM config).

    ``config``: the checkpoint's config.json as a dict (``GAUAlphaConfig`` fields; None: the sizes
    come from the tensors, eps 1e-12). ``dropout``: the rate for ``FlashConfig.dropout`` (0: for
    inference). A missing, unexpected or misshapen tensor is one :class:`GAUAlphaImportError`
    listing every name. A ``cls.predictions.decoder.weight`` equal to the word embedding (the port
    ties them) or absent gives a tied head; a different one becomes ``head.kernel``.
    """
    sd = {k: v for k, v in state_dict.items()}
    if config is not None:
        _check_hf_config(config)
    p = _prefix(sd)
    word, types = (
        f"{p}embeddings.word_embeddings.weight",
        f"{p}embeddings.token_type_embeddings.weight",
    )
    dense0, q0 = (
        f"{p}encoder.layer.0.gau.i_dense.weight",
        f"{p}encoder.layer.0.gau.q_scaleoffset.weight",
    )
    shape = {k: tuple(getattr(val, "shape", np.shape(val))) for k, val in sd.items()}
    found_v, found_d = shape[word] if len(shape.get(word, ())) == 2 else (None, None)
    found_s = shape[q0][0] if q0 in shape and len(shape[q0]) == 1 else None
    found_e = None
    if dense0 in shape and found_s is not None and len(shape[dense0]) == 2:
        found_e = (shape[dense0][0] - found_s) // 2
    layer_ids = {int(m.group(1)) for k in sd if (m := _LAYER.match(k[len(p) :]))}
    found_layers = max(layer_ids) + 1 if layer_ids else None
    found_types = shape[types][0] if types in shape and len(shape[types]) == 2 else None
    v = _hf_int(config, "vocab_size", found_v)
    d = _hf_int(config, "hidden_size", found_d)
    e = _hf_int(config, "intermediate_size", found_e)
    s = _hf_int(config, "attention_key_size", found_s)
    n = _hf_int(config, "num_hidden_layers", found_layers)
    nt = _hf_int(config, "type_vocab_size", found_types)
    unknown = [
        name
        for name, val in (("vocab size", v), ("hidden size", d), ("intermediate size", e),
                          ("attention key size", s), ("layer count", n), ("token types", nt))
        if val is None
    ]  # fmt: skip
    if unknown:
        raise GAUAlphaImportError(
            f"not a GAU-alpha state dict: cannot find its {', '.join(unknown)} (expected tensors "
            f"such as {word!r}, {dense0!r}, {q0!r}; got {sorted(sd)[:8]}...)"
        )
    use_bias = f"{p}encoder.layer.0.gau.i_dense.bias" in sd
    if config is not None and "use_bias" in config:
        use_bias = bool(config["use_bias"])
    expected: dict[str, tuple[int, ...]] = {word: (v, d), types: (nt, d)}
    for i in range(n):
        g = f"{p}encoder.layer.{i}.gau."
        expected[g + "i_dense.weight"] = (2 * e + s, d)
        expected[g + "o_dense.weight"] = (d, e)
        expected[g + "q_scaleoffset.weight"] = (s,)
        expected[g + "k_scaleoffset.weight"] = (s,)
        if use_bias:
            expected[g + "i_dense.bias"] = (2 * e + s,)
            expected[g + "o_dense.bias"] = (d,)
            expected[g + "q_scaleoffset.bias"] = (s,)
            expected[g + "k_scaleoffset.bias"] = (s,)
    decoder = "cls.predictions.decoder.weight"
    optional = {decoder: (v, d)}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected) - set(optional))
    misshapen = [
        f"{k}: expected {want}, got {shape[k]}"
        for k, want in {**expected, **optional}.items()
        if k in shape and shape[k] != want
    ]
    if missing or unexpected or misshapen:
        raise GAUAlphaImportError(
            f"GAU-alpha state dict does not match a {n}-layer model (d={d}, e={e}, s={s}, "
            f"vocab {v}, {nt} token types): missing {missing}, unexpected {unexpected}, "
            f"misshapen {misshapen}"
        )
    t = {k: _np(val) for k, val in sd.items()}
    params = {"embed.weight": t[word], "type_embed.weight": t[types]}
    for i in range(n):
        g, c = f"{p}encoder.layer.{i}.gau.", f"layers.{i}."
        params[c + "hidden.kernel"] = t[g + "i_dense.weight"].T  # [U | V | Z], d -> 2e+s
        params[c + "qk.gamma"] = np.stack(
            [t[g + "q_scaleoffset.weight"], t[g + "k_scaleoffset.weight"]]
        )
        params[c + "out.kernel"] = t[g + "o_dense.weight"].T
        if use_bias:
            params[c + "hidden.bias"] = t[g + "i_dense.bias"]
            params[c + "qk.beta"] = np.stack(
                [t[g + "q_scaleoffset.bias"], t[g + "k_scaleoffset.bias"]]
            )
            params[c + "out.bias"] = t[g + "o_dense.bias"]
    tied = decoder not in t or np.array_equal(t[decoder], t[word])
    if not tied:
        params["head.kernel"] = t[decoder].T
    eps = float(config.get("layer_norm_eps", 1e-12)) if config is not None else 1e-12
    max_len = _hf_int(config, "max_position_embeddings", 512)
    block = block_config(d, e, s, use_bias=use_bias, eps=eps, max_len=max_len, dropout=dropout)
    cfg = LMConfig(
        block=block, vocab_size=v, num_layers=n, tie_embeddings=tied, head_bias=False,
        final_norm="none", embed_norm="rms", type_vocab_size=nt,
    )  # fmt: skip
    params = {k: np.ascontiguousarray(a) for k, a in params.items()}
    check_params(params, cfg)
    return params, cfg


def _tf_to_port(name: str) -> str | None:
    """A bert4keras GAU-alpha variable name -> the port's state-dict name (None: unknown)."""
    fixed = {
        "bert/embeddings/word_embeddings": "gau_alpha.embeddings.word_embeddings.weight",
        "bert/embeddings/token_type_embeddings": "gau_alpha.embeddings.token_type_embeddings.weight",
    }
    if name in fixed:
        return fixed[name]
    m = _TF_LAYER.match(name)
    if m is None:
        return None
    rest = {
        "i_dense/kernel": "i_dense.weight",
        "i_dense/bias": "i_dense.bias",
        "o_dense/kernel": "o_dense.weight",
        "o_dense/bias": "o_dense.bias",
        "q_scaleoffset/gamma": "q_scaleoffset.weight",
        "q_scaleoffset/beta": "q_scaleoffset.bias",
        "k_scaleoffset/gamma": "k_scaleoffset.weight",
        "k_scaleoffset/beta": "k_scaleoffset.bias",
    }.get(m.group(2))
    return None if rest is None else f"gau_alpha.encoder.layer.{m.group(1)}.gau.{rest}"


def import_bert4keras(
    variables: Mapping, config: Mapping | None = None, *, dropout: float = 0.0
) -> tuple[dict[str, np.ndarray], LMConfig]:
    """The variables of a bert4keras GAU-alpha TF1 checkpoint ({name: array}, as
    ``flashcore.tf.io.read_checkpoint`` reads them) -> (params, config). ``config``: its
    bert_config.json as a dict (None: sizes from the tensors). A variable that is not GAU-alpha's
    is an error listing them."""
    unknown = sorted(k for k in variables if _tf_to_port(k) is None)
    if unknown:
        raise GAUAlphaImportError(f"variables that are not GAU-alpha's: {unknown}")
    sd = {}
    for k, value in variables.items():
        value = _np(value)
        sd[_tf_to_port(k)] = value.T if k.endswith("/kernel") else value  # Keras: [in, out]
    return import_state_dict(sd, config, dropout=dropout)


def read_hf_config(folder: str | os.PathLike) -> dict | None:
    """The folder's config.json (GAUAlphaConfig or bert4keras' bert_config.json) as a dict, or
    None when there is none."""
    folder = Path(folder)
    for name in ("config.json", "bert_config.json"):
        path = folder / name
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise GAUAlphaImportError(f"{path}: not a readable JSON config: {err}") from err
    return None


def read_vocab(folder: str | os.PathLike) -> list[str]:
    """The tokens of the folder's vocab.txt (one a line; id = line number)."""
    path = Path(folder)
    path = path / "vocab.txt" if path.is_dir() else path
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise GAUAlphaImportError(f"{path}: no readable vocab.txt: {err}") from err
