"""flashcore: FLASH ("Transformer Quality in Linear Time", Hua et al. 2022) as one backend-neutral
spec. This package imports NumPy only; pick a native backend by importing ``flashcore.torch``,
``flashcore.jax`` or ``flashcore.tf``.
"""

from . import _llvm, dropout, loss
from .config import FlashConfig, LMConfig, TransformerConfig, config_from_dict
from .dropout import dropout_shapes
from .layers import flash, gau
from .lm import block_fn, cross_entropy, lm_hidden, lm_logits, lm_loss, transformer_block
from .params import ParamSpec, check_params, init, param_spec, subtree

__version__ = "0.1.0"

# triton (torch.compile, flashcore.torch's CUDA kernel) loads safely after TensorFlow: see _llvm.
_llvm.install()

__all__ = [
    "FlashConfig",
    "LMConfig",
    "TransformerConfig",
    "config_from_dict",
    "flash",
    "gau",
    "transformer_block",
    "block_fn",
    "lm_hidden",
    "lm_logits",
    "lm_loss",
    "cross_entropy",
    "ParamSpec",
    "param_spec",
    "init",
    "check_params",
    "subtree",
    "dropout",
    "dropout_shapes",
    "loss",
]
