"""Bad input raises a clear error and leaves the model exactly as it was."""
import dataclasses

import pytest
import torch

import dit_cache
from dit_cache.methods.base import CacheMethod
from dit_cache.testing import transformer_inputs
from dit_cache.runtime.registry import register_method


def _snapshot(model):
    return (
        {n: (set(m.__dict__), list(m._modules)) for n, m in model.named_modules()},
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_untouched(model, snap, name, reference):
    structure, weights = snap
    assert {n: (set(m.__dict__), list(m._modules)) for n, m in model.named_modules()} == structure
    now = model.state_dict()
    assert list(now) == list(weights) and all(torch.equal(now[k], v) for k, v in weights.items())
    with torch.no_grad():
        assert torch.equal(model(**transformer_inputs(name, transformer=model))[0], reference)


@pytest.fixture
def clean(name, model):
    with torch.no_grad():
        reference = model(**transformer_inputs(name, transformer=model))[0]
    snap = _snapshot(model)
    yield model
    _assert_untouched(model, snap, name, reference)


@pytest.mark.parametrize(
    "schedule, options, error, match",
    [
        ("skip-dt", {}, ValueError, r"unknown schedule preset 'skip-dt'\. Did you mean 'skip-dit'\?.*Valid presets: none"),
        ("skip-dit", {"interval": 0}, ValueError, "interval must be an integer >= 1"),
        ("skip-dit", {"shallow": 99}, ValueError, "shallow=99 is too deep"),
        ("skip-dit", {"start": 100.0, "close": 500.0}, ValueError, "empty caching window"),
        ("skip-dit", {"start": 100.0, "close": 100.0}, ValueError, "empty caching window"),
        ("skip-dit", {"intervall": 2}, TypeError, r"unknown option\(s\) \['intervall'\].*valid options"),
        ("none", {"interval": 2}, TypeError, "takes no options|unknown option"),
        ("skip-dit", {"fusion": "add"}, ValueError, "fusion must be one of|native long skips"),
        ("skip-dit", {"kernel": "cuda"}, ValueError, "kernel must be one of"),
        ("skip-dit", {"attention": "flash"}, ValueError, "attention must be one of"),
        (object(), {}, TypeError, "no cache method is registered for object"),
    ],
)
def test_bad_patch_arguments(clean, schedule, options, error, match):
    with pytest.raises(error, match=match):
        dit_cache.patch(clean, schedule, **options)


def test_xformers_without_cuda_is_a_clear_error(clean):
    with pytest.raises(RuntimeError, match="xformers|CUDA"):
        dit_cache.patch(clean, "skip-dit", attention="xformers")


def test_unsupported_model_names_supported_classes_and_how_to_register():
    with pytest.raises(ValueError, match=r"does not support Linear.*DiTTransformer2DModel.*register_adapter"):
        dit_cache.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pipeline with a `.transformer`"):
        dit_cache.patch(object())


def test_double_patch_and_unpatching_an_unpatched_model(name, model):
    with pytest.raises(ValueError, match="not patched"):
        dit_cache.unpatch(model)
    with pytest.raises(ValueError, match="not patched"):
        dit_cache.stats(model)
    dit_cache.patch(model, "skip-dit")
    with pytest.raises(ValueError, match="already patched.*unpatch"):
        dit_cache.patch(model, "none")
    dit_cache.unpatch(model)
    dit_cache.patch(model, "none")  # after unpatch a different method installs cleanly
    dit_cache.unpatch(model)


@dataclasses.dataclass(frozen=True)
class _BrokenConfig:
    name = "broken"
    inserts_adapters = True


@register_method(_BrokenConfig)
class _BrokenMethod(CacheMethod):
    def install(self):
        super().install()  # hooks go on every block, then the install fails
        raise RuntimeError("install failed half-way")


def test_failed_install_rolls_back_everything(clean):
    with pytest.raises(RuntimeError, match="half-way"):
        dit_cache.patch(clean, _BrokenConfig())
