"""The one way dit-cache writes a file: atomically, with the modes a user expects.

`atomic_write(path, write)` lets ``write`` fill a temporary file in the target's folder (named
``.ditcache-tmp-<pid>.<host>-<random>-<name>``), fsyncs it, gives it the target's current mode
(or ``0o666 & ~umask`` for a new file, like ``open()``) and renames it over ``path``: a reader
sees the old file or the new one, never a torn one. A temporary file left by a killed writer is
removed by the next write into that folder (as soon as its process is gone, or when it has not
been touched for `STALE_SECONDS`). Also: `finish_modes` / `usual_modes` for folders assembled
under ``tempfile.mkdtemp`` or written by ``save_pretrained`` (private modes) and `check_writable` to test an output path up front."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = ".ditcache-tmp-"
STALE_SECONDS = 60.0
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(path=None) -> int:
    """The mode a file written to `path` gets: the existing file's, else ``0o666 & ~umask``."""
    if path is not None:
        try:
            return stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            pass
    return 0o666 & ~current_umask()


def temp_prefix(name: str) -> str:
    """Prefix of our temporary entries for target `name` (pid and host make crashes visible)."""
    return f"{TEMP_PREFIX}{os.getpid()}.{_HOST}-{name[:80]}-"


def _writer_gone(entry: str) -> bool:
    """True when `entry` (one of our temporary names) was made on this host by a dead process."""
    owner = entry[len(TEMP_PREFIX) :].split("-", 1)[0]
    pid, _, host = owner.partition(".")
    if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive under another user, or not ours to ask
        return False
    return False


def remove_stale_temps(directory, max_age: float = STALE_SECONDS) -> list[str]:
    """Remove our temporary files / folders in `directory` whose writer is gone or that were not
    modified for `max_age` seconds; returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age < max_age and not _writer_gone(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:  # raced with its writer or another cleaner
            continue
    return removed


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Call ``write(temp_path)`` to produce the file, then rename it over `path` (see the module
    docstring). On any error the temporary file is removed and `path` is left as it was."""
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    remove_stale_temps(directory)
    mode = default_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), dir=directory)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def write_text(path, text: str) -> None:
    """`atomic_write` of UTF-8 text."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path, obj, **dump_options) -> None:
    """`atomic_write` of ``json.dumps(obj, **dump_options)`` plus a newline (indent 2 by default)."""
    dump_options.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **dump_options) + "\n")


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """`atomic_write` of a safetensors file."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def finish_modes(folder, like=None) -> None:
    """Give the files of `folder` the usual modes: those of the same names in folder `like` (the
    one being replaced), else ``0o666 & ~umask``; `folder` itself gets ``like``'s mode or
    ``0o777 & ~umask``. For folders made by ``tempfile.mkdtemp`` (0700) and files written by
    safetensors' ``save_file`` (0600 since safetensors 0.8, e.g. under ``save_pretrained``)."""
    umask = current_umask()
    like = Path(like) if like is not None and Path(like).is_dir() else None
    os.chmod(folder, stat.S_IMODE(os.stat(like).st_mode) if like else 0o777 & ~umask)
    for entry in Path(folder).iterdir():
        if entry.is_file() and not entry.is_symlink():
            old = like / entry.name if like else None
            os.chmod(entry, default_mode(old) if old is not None and old.is_file() else 0o666 & ~umask)


@contextlib.contextmanager
def usual_modes(folder):
    """Files written into `folder` inside the block keep the mode of the file they replace, and
    new ones get ``0o666 & ~umask`` (see `finish_modes`)."""
    folder = Path(folder)
    before = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    yield
    default = 0o666 & ~current_umask()
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, before.get(entry.name, default))


def check_writable(path) -> None:
    """Raise OSError now if `path` cannot be written later (parents are created, as a write would)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")
    directory = existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{existing} is a file, not a folder")
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is not writable")
    fd, probe = tempfile.mkstemp(prefix=temp_prefix("probe"), dir=directory)
    os.close(fd)
    os.unlink(probe)
