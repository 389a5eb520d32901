"""The shared test cases (``tests/_cases.py``) plus the flashcore.torch tests' tensor helpers.

Imported by the test modules after their ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import torch
from _cases import ALL_CONFIGS, LAYER_CONFIGS, LM_CONFIGS, flash_cfg, noisy_params

import flashcore as fc

__all__ = [
    "ALL_CONFIGS",
    "LAYER_CONFIGS",
    "LM_CONFIGS",
    "flash_cfg",
    "module_for",
    "noisy_params",
    "sample_inputs",
]


def module_for(config, **kw):
    """The flashcore.torch module class for ``config``, built with ``kw``."""
    from flashcore.torch import block_class

    return block_class(config)(config, **kw)


def sample_inputs(config, b: int = 2, t: int = 11, seed: int = 0, dtype=None):
    """(x (b, t, d) or tokens (b, t), mask (b, t), segment_ids (b, t)) torch inputs; row 0 padded
    at the end, two segments."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - 3 :] = False
    seg = torch.zeros(b, t, dtype=torch.int64)
    seg[:, t // 2 :] = 1
    if isinstance(config, fc.LMConfig):
        x = torch.randint(0, config.vocab_size, (b, t), generator=g)
    else:
        x = torch.randn(b, t, config.dim, generator=g, dtype=dtype or torch.float64)
    return x, mask, seg
