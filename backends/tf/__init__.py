"""flashcore.tf: Keras 3 layers (TensorFlow backend) over the flashcore spec. Importing it imports
TensorFlow and Keras; Keras must run on its TensorFlow backend (``KERAS_BACKEND`` unset or
``tensorflow``). It imports in any order with torch, triton and jax (see ``flashcore._llvm``).

    from flashcore.tf import FLASH, GAU, TransformerBlock, LM, xp
    from flashcore.tf import io   # save / load (Keras .weights.h5), save_canonical / load_canonical

Every causal block and the LM decode incrementally with ``decode_init`` / ``decode_step``
(:mod:`flashcore.tf.decode`; the LM also ``prefill`` / ``generate``).
"""

import os as _os

# TensorFlow's C++ INFO lines (oneDNN notices) drown the command-line output; a user's own
# setting wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras as _keras  # noqa: E402

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"flashcore.tf needs Keras on its TensorFlow backend, but KERAS_BACKEND is "
        f"{_keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras"
    )

from . import decode, io  # noqa: E402
from .layers import FLASH, GAU, TransformerBlock  # noqa: E402
from .lm import LM  # noqa: E402
from .module import CanonicalModule, block_class  # noqa: E402
from .naming import naming_table  # noqa: E402
from .xp import xp  # noqa: E402

__all__ = [
    "FLASH",
    "GAU",
    "TransformerBlock",
    "LM",
    "block_class",
    "CanonicalModule",
    "naming_table",
    "decode",
    "io",
    "xp",
]
