"""`flop_counter()`: torch's FlopCounterMode, counting on the CPU what a GPU or meta run counts.

Torch's FLOP table has no entry for the fused CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so a CPU run would count attention as 0
while a GPU or meta run counts it. It is added with torch's own SDPA formula. FlopCounterMode
keys its table by overload *packet* (``func._overloadpacket``), so that is the key here."""
from __future__ import annotations

import torch


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _addmm_inplace_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import mm_flop

    return mm_flop(a_shape, b_shape)


def custom_flop_mapping() -> dict:
    """The ops torch's table lacks: the CPU's fused attention, and the in-place `addmm_` (the
    folded skip-fusion kernel accumulates its second GEMM with it, kernels/folded.py)."""
    from torch.utils.flop_counter import flop_registry

    wanted = {"_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu_flops, "addmm_": _addmm_inplace_flops}
    mapping = {}
    for name, formula in wanted.items():
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            mapping[packet] = formula
    return mapping


def flop_counter():
    """A FlopCounterMode (display off) that also counts the CPU's fused attention."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=custom_flop_mapping())
