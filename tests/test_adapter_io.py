"""Adapter-only safetensors files: round trip, metadata, atomicity, refusal of mismatches."""
import copy
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import dit_cache
from dit_cache.runtime.patch_state import get_state
from dit_cache.testing import TINY_MODELS, build_transformer, transformer_inputs


def _randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in _adapter_params(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _adapter_params(model):
    return [(n, p) for n, p in model.named_parameters() if "dit_cache_lsc" in n or ".skip_" in n]


def _out(model, name):
    with torch.no_grad():
        return model(**transformer_inputs(name, transformer=model))[0]


# every family (SD3 and FLUX also in their own files): the round trip is cheap
@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("fusion", [None, "replace"])
def test_round_trip(tmp_path, name, model, fusion):
    if fusion == "replace" and name == "tiny-hunyuan":
        fusion = None  # native skips have no mode to choose
    target = copy.deepcopy(model)
    dit_cache.patch(model, "skip-dit", fusion=fusion)
    dit_cache.patch(target, "skip-dit", fusion=fusion)
    _randomise_adapters(model, seed=1)
    _randomise_adapters(target, seed=2)
    assert not torch.equal(_out(model, name), _out(target, name))
    path = tmp_path / "adapters.safetensors"
    dit_cache.save_adapters(model, path)
    assert os.listdir(tmp_path) == ["adapters.safetensors"]  # no temp file left behind
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["backbone"] == type(model).__name__ and meta["format"] == "dit-cache-adapters"
    assert meta["fusion"] in ("residual", "replace", "native") and "pairing" in meta and "dit_cache_version" in meta
    assert keys and all(("lsc." in k) or (".skip_" in k) for k in keys)  # adapters only
    dit_cache.load_adapters(target, path)
    assert torch.equal(_out(model, name), _out(target, name))


def test_refuses_mismatches_and_leaves_model_unchanged(tmp_path, name, model):
    dit_cache.patch(model, "skip-dit")
    _randomise_adapters(model)
    before = {n: p.clone() for n, p in _adapter_params(model)}

    other_name = TINY_MODELS[(TINY_MODELS.index(name) + 1) % len(TINY_MODELS)]  # another backbone class
    other = build_transformer(other_name)
    dit_cache.patch(other, "skip-dit")
    wrong_backbone = tmp_path / "other.safetensors"
    dit_cache.save_adapters(other, wrong_backbone)
    with pytest.raises(ValueError, match="backbone class"):
        dit_cache.load_adapters(model, wrong_backbone)

    not_ours = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(not_ours))
    with pytest.raises(ValueError, match="not a dit-cache adapter file"):
        dit_cache.load_adapters(model, not_ours)

    # same backbone and pairing but a tensor of the wrong shape
    good = tmp_path / "good.safetensors"
    dit_cache.save_adapters(model, good)
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(tensors)[-1]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    bad_shape = tmp_path / "bad_shape.safetensors"
    save_file(tensors, str(bad_shape), metadata=meta)
    with pytest.raises(ValueError, match="shapes that do not fit"):
        dit_cache.load_adapters(model, bad_shape)

    # pairing recorded differently
    meta_pairing = dict(meta, pairing="[[0, 1]]")
    bad_pairing = tmp_path / "bad_pairing.safetensors"
    save_file({k: v for k, v in tensors.items() if k != key}, str(bad_pairing), metadata=meta_pairing)
    with pytest.raises(ValueError, match="pairing"):
        dit_cache.load_adapters(model, bad_pairing)

    after = dict(_adapter_params(model))
    assert all(torch.equal(after[n], p) for n, p in before.items())


def test_fusion_mode_mismatch_is_explained(tmp_path):
    a, b = build_transformer("tiny-dit"), build_transformer("tiny-dit")
    dit_cache.patch(a, "skip-dit", fusion="replace")
    dit_cache.patch(b, "skip-dit", fusion="residual")
    dit_cache.save_adapters(a, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="fusion='replace'"):
        dit_cache.load_adapters(b, tmp_path / "a.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build_transformer("tiny-dit")
    dit_cache.patch(model, "skip-dit")
    path = tmp_path / "adapters.safetensors"
    dit_cache.save_adapters(model, path)
    original = path.read_bytes()

    import dit_cache.runtime.adapter_io as io

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        dit_cache.save_adapters(model, path)
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["adapters.safetensors"]


def test_patch_loads_an_adapter_file_all_or_nothing(tmp_path, name, model):
    if name == "tiny-hunyuan":  # native skips are the model's own weights
        with pytest.raises(ValueError, match="native skips"):
            dit_cache.patch(model, "skip-dit", adapters=tmp_path / "none.safetensors")
        assert get_state(model) is None
        return
    original = _out(model, name)
    trained = copy.deepcopy(model)
    dit_cache.patch(trained, "skip-dit")
    _randomise_adapters(trained, seed=3)
    path = tmp_path / "adapters.safetensors"
    dit_cache.save_adapters(trained, path)
    dit_cache.patch(model, "skip-dit", adapters=path)
    assert torch.equal(_out(model, name), _out(trained, name)) and not torch.equal(_out(model, name), original)
    dit_cache.unpatch(model)
    with pytest.raises(ValueError, match="does not insert long-skip adapters"):
        dit_cache.patch(model, "fora", adapters=path)
    assert get_state(model) is None
    other = build_transformer("tiny-latte" if name == "tiny-dit" else "tiny-dit")  # another backbone class
    dit_cache.patch(other, "skip-dit")
    dit_cache.save_adapters(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError):
        dit_cache.patch(model, "skip-dit", adapters=tmp_path / "other.safetensors")
    assert get_state(model) is None and torch.equal(_out(model, name), original)
