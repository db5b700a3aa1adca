"""Building the converted diffusers model from the planned weights, and writing the Skip-DiT
long skips as dit-cache adapters."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..api import patch, unpatch
from ..runtime import adapter_io
from ..runtime.adapter_io import nonfinite_tensors
from ..runtime.patch_state import get_state
from .errors import ConvertError
from .layouts import Plan, summarize_keys


def check_weights(sd: dict[str, torch.Tensor], plan: Plan, where: str, allow_nonfinite: bool = False) -> None:
    """Refuse source tensors the model cannot hold: not floating point (named with their dtype),
    or holding NaN / infinity (the converted model would output NaN) unless `allow_nonfinite`.
    Keys the plan knowingly drops (recomputed buffers) are not checked."""
    used = {k: v for k, v in sd.items() if k not in set(plan.ignored)}
    wrong = {k: v.dtype for k, v in used.items() if not v.is_floating_point()}
    if wrong:
        by_dtype: dict[str, list[str]] = {}
        for k, dtype in wrong.items():
            by_dtype.setdefault(str(dtype).removeprefix("torch."), []).append(k)
        shown = "; ".join(f"{summarize_keys(keys)} ({dtype})" for dtype, keys in sorted(by_dtype.items()))
        raise ConvertError(
            f"{where}: {len(wrong)} tensor(s) are not floating point: {shown}; the model's weights are float "
            "(is this the right checkpoint, or the right sub-dict --key?)"
        )
    bad = [] if allow_nonfinite else nonfinite_tensors(used)
    if bad:
        raise ConvertError(
            f"{where} holds NaN or infinite values in {summarize_keys(bad)}: the converted model would output NaN. "
            "Use a healthy checkpoint (e.g. another --key such as ema), or pass --allow-nonfinite "
            "(allow_nonfinite=True) to convert it anyway"
        )


def check_cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype, allow_nonfinite: bool = False) -> None:
    """Refuse a --dtype cast that overflows finite weights to infinity (e.g. float16 above 65504)."""
    bad = [] if allow_nonfinite else nonfinite_tensors(tensors)
    if bad:
        name = str(dtype).removeprefix("torch.")
        raise ConvertError(
            f"casting to {name} overflows to infinity in {summarize_keys(bad)}: the converted model would output "
            f"NaN; keep the checkpoint's dtype or use --dtype bfloat16 (or pass --allow-nonfinite)"
        )


@contextlib.contextmanager
def _parameters_on_meta():
    """Build a module with its parameters on the meta device (no allocation, no random init;
    they are assigned from the converted weights) and its buffers real (the sin-cos tables)."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_model(plan: Plan, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The planned model class and config holding ``tensors`` (eval mode, no grad)."""
    try:
        with _parameters_on_meta():
            model = plan.model_class(**plan.config)
    except Exception as err:  # noqa: BLE001
        raise ConvertError(f"cannot build {plan.model_class.__name__}({plan.config}): {err}") from err
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if missing or unexpected or left:  # a mapping bug, not a user error
        raise RuntimeError(
            f"internal conversion error for {plan.model_class.__name__}: missing {summarize_keys(missing)}, "
            f"unexpected {summarize_keys(unexpected)}, unassigned {summarize_keys(left)}"
        )
    return model.eval().requires_grad_(False)


def write_adapters(model: nn.Module, skips: dict[int, dict[str, torch.Tensor]], path: Path) -> None:
    """Patch with replace-mode adapters, copy the Skip-DiT skip weights in, save, unpatch."""
    try:
        patch(model, "skip-dit", fusion="replace")
    except ValueError as err:
        raise ConvertError(f"cannot insert dit-cache adapters into the converted model: {err}") from err
    try:
        state = get_state(model)
        half = len(skips)
        feeds = {deep: shallow for shallow, deep in state.adapter.pairs(model)}
        wanted = {str(half + j) for j in skips}
        if set(state.lscs.keys()) != wanted or any(feeds[half + j] != half - 1 - j for j in skips):
            raise RuntimeError(f"dit-cache pairing {sorted(feeds.items())} differs from Skip-DiT's (unit N/2+j <- N/2-1-j)")
        with torch.no_grad():
            for j, weights in skips.items():
                lsc = state.lscs[str(half + j)]  # deep unit N/2+j
                for name, value in weights.items():
                    lsc.get_parameter(name).copy_(value)
        adapter_io.save_adapters(model, path)  # looked up at call time (tests simulate a failing disk)
    finally:
        unpatch(model)
