"""flashcore.torch: the native PyTorch backend. Importing it imports torch.

Modules built from the frozen flashcore configs; their forward calls the flashcore spec on
``array_api_compat.torch`` (the math lives in flashcore/ only):

    GAU(FlashConfig(kind="gau"))          (b, t, d) -> (b, t, d)
    FLASH(FlashConfig(kind="flash"))      (b, t, d) -> (b, t, d)
    TransformerBlock(TransformerConfig)   (b, t, d) -> (b, t, d)
    LM(LMConfig)                          (b, t) ints -> (b, t, v) logits

Every causal block and the LM decode incrementally with ``decode_init`` / ``decode_step``
(:mod:`flashcore.torch.decode`; the LM also ``prefill`` / ``generate``).

``seed=`` gives the weights of ``flashcore.init(config, seed)``; ``load_canonical`` /
``to_canonical`` exchange canonical weights through the naming tables in
:mod:`flashcore.torch.naming`; :mod:`flashcore.torch.io` saves and loads weight files (canonical
safetensors and torch state-dict files) with native tensors. ``LM.from_pretrained(dir)`` reads a
Hugging Face style folder (config.json + canonical model.safetensors). :mod:`flashcore.torch.hf`
(imported on its own; the ``[hf]`` extra) is the transformers integration: ``AutoModelForCausalLM``,
``generate``, the ``Trainer``.
"""

from . import decode, io
from .layers import FLASH, GAU, TransformerBlock
from .lm import LM
from .module import CanonicalModule, ParamGroup, block_class
from .naming import naming_table
from .xp import xp

__all__ = [
    "GAU",
    "FLASH",
    "TransformerBlock",
    "LM",
    "block_class",
    "CanonicalModule",
    "ParamGroup",
    "naming_table",
    "decode",
    "io",
    "xp",
]
