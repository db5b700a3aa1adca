"""One atomic-write helper (dit_cache._common.files) for every file dit-cache writes: temp files
of a killed writer are removed by the next write, modes follow the umask (or the replaced file)."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dit_cache
from dit_cache._common import files
from dit_cache.testing import build_transformer

ROOT = Path(__file__).resolve().parents[1]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _patched():
    model = build_transformer("tiny-dit")
    dit_cache.patch(model, "skip-dit")
    return model


def test_sigkill_during_save_adapters_is_cleaned_up_by_the_next_save(tmp_path):
    target = tmp_path / "adapters.safetensors"
    child = textwrap.dedent(f"""
        import sys, time
        import dit_cache
        import dit_cache.runtime.adapter_io as io
        from dit_cache.testing import build_transformer
        model = build_transformer("tiny-dit")
        dit_cache.patch(model, "skip-dit")
        def slow_save(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"x" * 4096)
            print("writing", flush=True)
            time.sleep(600)
        io.save_file = slow_save
        dit_cache.save_adapters(model, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(files.TEMP_PREFIX)  # what the crash leaves (young file)

    dit_cache.save_adapters(_patched(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors"]


def test_stale_temp_files_are_removed_but_live_ones_and_foreign_ones_kept(tmp_path):
    old = tmp_path / f"{files.temp_prefix('a.safetensors')}abc"  # our pid: alive, but untouched for long
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young = tmp_path / f"{files.temp_prefix('b.json')}def"  # a concurrent writer of ours, in progress
    young.write_bytes(b"partial")
    foreign = tmp_path / ".tmp-user.safetensors"  # not our naming
    foreign.write_bytes(b"theirs")
    os.utime(foreign, (time.time() - 3600, time.time() - 3600))
    files.write_text(tmp_path / "x.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young.name, foreign.name, "x.txt"])


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    dit_cache.save_adapters(_patched(), tmp_path / "adapters.safetensors")
    files.write_json(tmp_path / "finetune.json", {"a": 1})
    files.save_safetensors({}, tmp_path / "w.safetensors")
    for name in ("adapters.safetensors", "finetune.json", "w.safetensors"):
        assert _mode(tmp_path / name) == expected, name


def test_replacing_keeps_the_existing_mode(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "adapters.safetensors"
    model = _patched()
    dit_cache.save_adapters(model, target)
    os.chmod(target, 0o640)
    dit_cache.save_adapters(model, target)
    assert _mode(target) == 0o640
    js = tmp_path / "f.json"
    js.write_text("{}")
    os.chmod(js, 0o604)
    files.write_json(js, {"b": 2})
    assert _mode(js) == 0o604 and js.read_text() == '{\n  "b": 2\n}\n'


def test_finetune_result_files_follow_the_umask(tmp_path, umask):
    from test_finetune import FAST, digits_like, tiny_dit

    umask(0o022)
    dit_cache.finetune(tiny_dit(), digits_like(4), tmp_path, adapter_steps=1, save_fp16=True,
                       **{**FAST, "batch_size": 4})
    for name in ("finetune.json", "adapters.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        assert _mode(tmp_path / name) == 0o644, name
    assert not [p for p in tmp_path.rglob(f"{files.TEMP_PREFIX}*")]


def test_check_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        files.check_writable(blocker / "out.json")
    with pytest.raises(OSError):
        files.check_writable(tmp_path)
    files.check_writable(tmp_path / "new" / "out.json")
    assert list((tmp_path / "new").iterdir()) == []


def test_convert_output_modes_and_stale_temp_folders(tmp_path, umask):
    from safetensors.torch import save_file
    from test_convert import HEADS, dit_state_dict

    umask(0o027)
    save_file(dit_state_dict(skips=True), str(tmp_path / "ck.safetensors"))
    crashed = tmp_path / f"{files.TEMP_PREFIX}1.00000000-out-abc"  # a folder left by a killed convert
    crashed.mkdir()
    os.utime(crashed, (time.time() - 3600, time.time() - 3600))
    out = tmp_path / "out"
    dit_cache.convert(tmp_path / "ck.safetensors", out, "skip-dit", config={"num_heads": HEADS})
    assert not crashed.exists()
    assert _mode(out) == 0o750
    weights = out / "diffusion_pytorch_model.safetensors"
    assert {_mode(p) for p in out.iterdir()} == {0o640}
    os.chmod(weights, 0o600)
    os.chmod(out / "config.json", 0o644)
    dit_cache.convert(tmp_path / "ck.safetensors", out, "skip-dit", config={"num_heads": HEADS}, overwrite=True)
    assert _mode(weights) == 0o600 and _mode(out / "config.json") == 0o644  # the replaced files' modes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "out"]


def test_checkpoint_temp_folders_of_a_killed_run_are_removed_by_the_next_save(tmp_path, umask):
    import torch

    from dit_cache._common.dist import DistContext
    from dit_cache.finetuning.checkpoints import list_checkpoints, save_checkpoint

    umask(0o022)
    left = tmp_path / ".checkpoint-00000007.tmp"  # killed while writing step 7
    left.mkdir()
    (left / "state.pt").write_bytes(b"partial")
    final = save_checkpoint(tmp_path, 9, {"step": 9}, {"g": torch.zeros(1)}, DistContext(), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000009"]
    assert list_checkpoints(tmp_path) == [final] and _mode(final / "state.pt") == 0o644
