"""Accelerated mixed-chunk attention cores for torch, behind a guard.

``attention_core`` has the signature of :func:`flashcore.layers.attention_core_flash` and is what
``flashcore.torch`` modules pass as ``flash(..., core=attention_core)``. It picks a fused kernel when
one applies (see :func:`can_use_kernel`) and otherwise runs the spec's own core, which is also the
kernel's oracle in tests.
"""

from __future__ import annotations

from flashcore.layers import attention_core_flash

__all__ = ["attention_core", "can_use_kernel"]


def can_use_kernel(v, config, mask, segment_ids) -> bool:
    """Whether a fused kernel handles this call (none yet: always False)."""
    return False


def attention_core(qq, qk, lq, lk, v, *, bias, config, mask=None, segment_ids=None, xp=None):
    """(b, t, s) x4 and (b, t, e) -> (b, t, e); see flashcore.layers.attention_core_flash."""
    return attention_core_flash(
        qq, qk, lq, lk, v, bias=bias, config=config, mask=mask, segment_ids=segment_ids, xp=xp
    )
