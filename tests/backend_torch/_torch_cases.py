"""Shared configs and inputs for the flashcore.torch tests (tiny sizes: each test takes seconds).

Imported by the test modules after their ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import numpy as np
import torch

import flashcore as fc


def flash_cfg(**kw) -> fc.FlashConfig:
    base = dict(dim=16, qk_dim=8, chunk_size=4, max_len=32, t5_buckets=8, t5_max_distance=16)
    return fc.FlashConfig(**{**base, **kw})


# One config per module type and option family; ids name what they vary.
LAYER_CONFIGS = {
    "flash": flash_cfg(),
    "flash-causal-t5-layer-shift": flash_cfg(
        causal=True, rel_bias="t5", norm="layer", token_shift=True
    ),
    "flash-rms-nobias": flash_cfg(norm="rms", rel_bias="none"),
    "gau": flash_cfg(kind="gau"),
    "gau-causal-laplace": flash_cfg(kind="gau", causal=True, attention="laplace"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
    "transformer-scale": fc.TransformerConfig(dim=16, heads=4, norm="scale", causal=False),
}

LM_CONFIGS = {
    "lm-flash": fc.LMConfig(block=flash_cfg(causal=True), vocab_size=11, num_layers=2),
    "lm-gau-untied": fc.LMConfig(
        block=flash_cfg(kind="gau", causal=True), vocab_size=11, tie_embeddings=False
    ),
    "lm-transformer-headbias": fc.LMConfig(
        block=fc.TransformerConfig(dim=16, heads=2), vocab_size=11, head_bias=True
    ),
    "lm-flash-bidir": fc.LMConfig(block=flash_cfg(), vocab_size=11),
    "lm-flash-abspos": fc.LMConfig(
        block=flash_cfg(causal=True, norm="layer"),
        vocab_size=11,
        abs_pos="scaled_sinusoidal",
        final_norm="rms",
        tie_embeddings=False,
        head_bias=True,
    ),
}

ALL_CONFIGS = {**LAYER_CONFIGS, **LM_CONFIGS}


def module_for(config, **kw):
    """The flashcore.torch module class for ``config``, built with ``kw``."""
    from flashcore.torch import LM, block_class

    cls = LM if isinstance(config, fc.LMConfig) else block_class(config)
    return cls(config, **kw)


def noisy_params(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical float64 weights with noise on every tensor, so that no term is trivially zero."""
    rng = np.random.default_rng(seed + 100)
    return {
        k: v + rng.normal(0.0, 0.3, v.shape)
        for k, v in fc.init(config, seed, dtype=np.float64).items()
    }


def sample_inputs(config, b: int = 2, t: int = 11, seed: int = 0, dtype=None):
    """(x or tokens, mask, segment_ids) torch inputs; row 0 padded at the end, two segments."""
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
