"""Convert original DiT, released Skip-DiT and Latte-skip checkpoints to diffusers + dit-cache.

``convert(src, out, "dit" | "skip-dit" | "latte-skip")`` reads a ``.pt``/``.pth`` (plain
tensors only: ``torch.load(weights_only=True)``) or ``.safetensors`` checkpoint, picks the
``ema`` / ``model`` / ``state_dict`` / ``module`` sub-dict when present, infers the
architecture from the tensors (``config`` overrides what the tensors cannot tell, such as the
number of heads), maps the weights (see :mod:`dit_cache.convert_layouts`) and writes into
``out``:

- ``config.json`` + ``diffusion_pytorch_model.safetensors``: the diffusers model
  (``DiTTransformer2DModel`` / ``LatteTransformer3DModel``, ``save_pretrained``);
- ``dit_cache_adapters.safetensors`` (Skip-DiT layouts): the long skips as dit-cache adapters
  in ``"replace"`` mode: ``patch(model, "skip-dit", fusion="replace")`` then
  ``load_adapters(model, out / "dit_cache_adapters.safetensors")`` runs the released model;
- ``dit_cache_convert.json``: what was converted, the inferred config, ignored keys, notes.

Nothing is written unless the whole conversion succeeds: the directory is assembled next to
``out`` under a temporary name and renamed into place.

Import helpers from this module with ``from dit_cache.convert import ...``: the package
attribute ``dit_cache.convert`` is the function.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .layouts import PLANNERS, ConvertError, Plan, summarize_keys

__all__ = [
    "convert",
    "ConvertError",
    "ConvertResult",
    "LAYOUTS",
    "read_checkpoint",
    "parse_config",
    "use_original_dit_timestep_embedding",
]

LAYOUTS = tuple(PLANNERS)
SUBDICT_KEYS = ("ema", "model", "state_dict", "module")  # in order of preference
ADAPTER_FILE = "dit_cache_adapters.safetensors"
INFO_FILE = "dit_cache_convert.json"
INFO_FORMAT = "dit-cache-convert"
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip
CONFIG_ALIASES = {"num_attention_heads": "num_heads", "heads": "num_heads", "input_size": "sample_size"}
# Classes a DiT-style training checkpoint may pickle besides tensors; harmless to construct.
SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class ConvertResult:
    out: Path
    layout: str
    model_class: str
    config: dict
    adapters: Path | None
    checkpoint_key: str | None  # the sub-dict used ("ema", ...), None for a bare state dict
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading
def _torch_load(path: Path):
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as err:
            text = str(err)
            code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            if code:
                raise ConvertError(
                    f"{path} is a pickle that needs code to load ({code.group(1)}); only plain tensors are read "
                    "(torch.load(weights_only=True)). If you trust the file, re-save just its state dict, e.g. "
                    "torch.save(torch.load(src, weights_only=False)['ema'], dst), or convert it to .safetensors"
                ) from None
            after = text.split("WeightsUnpickler error:", 1)[-1]
            detail = next((line.strip() for line in after.splitlines() if line.strip()), "unreadable pickle")
            raise ConvertError(f"{path} cannot be read as a plain-tensor torch checkpoint: {detail}") from None
        except ConvertError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated / not a torch file
            raise ConvertError(f"{path} cannot be read as a torch checkpoint: {type(err).__name__}: {err}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _strip_prefixes(sd: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path, checkpoint_key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read `path` and return ``(flat state dict, sub-dict path used or None)``."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as err:  # noqa: BLE001
            raise ConvertError(f"{path} cannot be read as safetensors: {err}") from None
    else:
        obj = _torch_load(path)
    picked: list[str] = []
    if checkpoint_key:
        for part in checkpoint_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
                raise ConvertError(f"{path} has no entry {checkpoint_key!r} (at {part!r}; available: {have})")
            obj, picked = obj[part], picked + [part]
    else:
        while isinstance(obj, Mapping) and not _is_state_dict(obj):
            sub = next((k for k in SUBDICT_KEYS if isinstance(obj.get(k), Mapping)), None)
            if sub is None:
                break
            obj, picked = obj[sub], picked + [sub]
    where = f"{path}" + (f" [{'.'.join(picked)}]" if picked else "")
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{where} does not hold a state dict (a mapping of names to tensors), but a {type(obj).__name__}")
    if not obj:
        raise ConvertError(f"{where} is an empty state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        sample = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in bad[:4])
        raise ConvertError(
            f"{where} is not a state dict: {len(bad)} of {len(obj)} entries are not tensors ({sample}); "
            f"pick the sub-dict holding the weights with --key (tried {', '.join(SUBDICT_KEYS)})"
        )
    return _strip_prefixes(dict(obj)), (".".join(picked) or None)


# ---------------------------------------------------------------------------- config
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_config_item(item: str) -> dict:
    text = item.strip()
    if os.path.isfile(text):
        try:
            data = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConvertError(f"--config file {text}: not valid JSON ({err})") from None
    elif text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConvertError(f"--config {text!r}: not valid JSON ({err})") from None
    elif "=" in text:
        data = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConvertError(f"--config {pair!r}: expected key=value")
            data[key.strip()] = _parse_value(value.strip())
    else:
        raise ConvertError(f"--config {item!r}: expected a JSON file, a JSON object or key=value[,key=value]")
    if not isinstance(data, dict):
        raise ConvertError(f"--config {item!r}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_config(spec) -> dict:
    """Overrides from a dict, a JSON file / JSON object / ``k=v[,k=v]`` string, or a list of those."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        data = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        data = _parse_config_item(os.fspath(spec))
    elif isinstance(spec, (list, tuple)):
        data = {}
        for item in spec:
            data.update(parse_config(item))
    else:
        raise ConvertError(f"config must be a dict, a string or a list of strings, got {type(spec).__name__}")
    return {CONFIG_ALIASES.get(k, k): v for k, v in data.items()}


def _resolve_dtype(dtype, tensors: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype is None:
        found = {v.dtype for v in tensors.values() if v.is_floating_point()}
        return found.pop() if len(found) == 1 else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConvertError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


# ---------------------------------------------------------------------------- building
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


def _build(plan: Plan, tensors: dict[str, torch.Tensor]) -> nn.Module:
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


def _write_adapters(model: nn.Module, skips: dict[int, dict[str, torch.Tensor]], path: Path) -> None:
    """Patch with replace-mode adapters, copy the Skip-DiT skip weights in, save, unpatch."""
    from ..runtime.adapter_io import save_adapters
    from ..api import patch, unpatch
    from ..runtime.patch_state import get_state

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
        save_adapters(model, path)
    finally:
        unpatch(model)


# ---------------------------------------------------------------------------- output directory
def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ConvertError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
        if out.is_symlink() or not out.is_dir():
            raise ConvertError(f"refusing to overwrite {out}: not a directory")
        if any(out.iterdir()) and not (out / INFO_FILE).is_file():
            raise ConvertError(f"refusing to overwrite {out}: it was not written by ditcache convert (no {INFO_FILE})")
    if not out.parent.is_dir():
        raise ConvertError(f"cannot create {out}: {out.parent} is not a directory")


def _finish_modes(tmp: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for entry in tmp.iterdir():
        if entry.is_file():
            os.chmod(entry, 0o666 & ~umask)


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        _check_out(out, overwrite)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)
    except OSError as err:
        raise ConvertError(f"cannot create {out}: {err}") from None


# ---------------------------------------------------------------------------- entry points
def convert(
    src,
    out,
    layout: str = "dit",
    *,
    config=None,
    overwrite: bool = False,
    dtype=None,
    checkpoint_key: str | None = None,
) -> ConvertResult:
    """Convert checkpoint `src` (layout ``"dit"``, ``"skip-dit"`` or ``"latte-skip"``) into the
    diffusers model directory `out` (+ dit-cache adapters for the Skip-DiT layouts).

    `config` overrides what the tensors do not determine (``num_heads``, ``sample_size`` when
    there is no ``pos_embed``, Latte's ``video_length`` ...): a dict, a JSON file, a JSON
    object or ``"k=v,k=v"``. `dtype` (``"float32"``, ``"float16"``, ``"bfloat16"``) casts the
    weights (default: keep the checkpoint's). `checkpoint_key` selects a sub-dict
    (default: the first of ema / model / state_dict / module present). Raises
    :class:`ConvertError` (a ``ValueError``) and writes nothing if anything does not fit."""
    if layout not in PLANNERS:
        raise ConvertError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    out = Path(out).absolute()
    _check_out(out, overwrite)
    overrides = parse_config(config)
    sd, picked = read_checkpoint(src, checkpoint_key)
    plan = PLANNERS[layout](sd, overrides)
    target = _resolve_dtype(dtype, plan.tensors)
    # copy=True: no tensor may share storage with another (qkv chunks, per-block embedder copies)
    tensors = {k: v.detach().to(dtype=target if v.is_floating_point() else v.dtype, copy=True).contiguous() for k, v in plan.tensors.items()}
    skips = {j: {k: v.detach().to(target) for k, v in w.items()} for j, w in plan.skips.items()}
    model = _build(plan, tensors)
    for check in plan.checks:
        check(model)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        adapters = None
        if skips:
            _write_adapters(model, skips, tmp / ADAPTER_FILE)
            adapters = out / ADAPTER_FILE
        model.save_pretrained(str(tmp), safe_serialization=True)
        from .. import __version__

        info = {
            "format": INFO_FORMAT,
            "format_version": "1",
            "dit_cache_version": __version__,
            "layout": layout,
            "source": str(Path(src).absolute()),
            "source_bytes": Path(src).stat().st_size,
            "checkpoint_key": picked,
            "dtype": str(target).removeprefix("torch."),
            "model_class": plan.model_class.__name__,
            "config": plan.config,
            "adapters": ADAPTER_FILE if skips else None,
            "fusion": "replace" if skips else None,
            "ignored_keys": plan.ignored,
            "notes": plan.notes,
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _finish_modes(tmp)
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(out, layout, plan.model_class.__name__, plan.config, adapters, picked, plan.ignored, plan.notes)


def use_original_dit_timestep_embedding(model_or_pipeline):
    """Make a diffusers DiT compute the original DiT timestep embedding, in place.

    diffusers' ``CombinedTimestepLabelEmbeddings`` builds its 256-channel sinusoid with
    ``downscale_freq_shift=1`` (frequencies ``10000^(-k/127)``); facebookresearch/DiT and
    Skip-DiT use ``10000^(-k/128)``. Converted weights are exact either way; with this call the
    converted model computes the original function. It is an attribute, not a config field:
    call it again after every ``from_pretrained``. Returns the model."""
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

    from ..api import resolve_model

    model = resolve_model(model_or_pipeline)
    found = [m for m in model.modules() if isinstance(m, CombinedTimestepLabelEmbeddings)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no DiT timestep/label embedder (CombinedTimestepLabelEmbeddings)")
    for module in found:
        module.time_proj.downscale_freq_shift = 0
    return model
