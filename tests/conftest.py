import pytest
import torch

from dit_cache.testing import TINY_MODELS, build_pipeline, build_transformer

FAMILIES = TINY_MODELS  # ("tiny-dit", "tiny-latte", "tiny-hunyuan")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models are overhead-bound: one thread is faster, and far faster when other jobs
    # share the two cores (OpenMP spin-waits otherwise).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=FAMILIES)
def name(request):
    return request.param


@pytest.fixture
def pipe(name):
    return build_pipeline(name, seed=0)


@pytest.fixture
def model(name):
    return build_transformer(name, seed=0)
