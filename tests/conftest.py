import os

import pytest
import torch

from dit_cache.testing import TINY_MODELS, build_pipeline, build_transformer

# Every family runs the preset x backbone matrix (test_methods_matrix), its own test file and
# tests/test_families.py; the many generic tests parametrized by `name` run the paper's three
# backbones by default, and all seven with DITCACHE_ALL_FAMILIES=1 (the full
# set takes ~28 min here, over CI's 20-minute budget).
CORE = ("tiny-dit", "tiny-latte", "tiny-hunyuan")
FAMILIES = TINY_MODELS if os.environ.get("DITCACHE_ALL_FAMILIES") else tuple(m for m in TINY_MODELS if m in CORE)


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
