"""Atomic file writes: a file is either complete or absent (temp file in the same folder, then rename)."""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


# temporary files are named .<target name>.<host>-<pid>.<random>.tmp, so the first write into a folder can delete
# those whose process is gone (killed before its rename); another host's are never touched
_OWNER = f"{socket.gethostname()}-"
_TEMP = re.compile(rf"^\..+\.{re.escape(_OWNER)}(\d+)\.[^.]+\.tmp$")
_swept: set[Path] = set()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_OWNER}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files that killed processes of this host left in `folder` (once per process)."""
    if folder in _swept:
        return
    _swept.add(folder)
    for entry in os.scandir(folder):
        found = _TEMP.match(entry.name)
        if found and not _alive(int(found[1])):
            Path(entry.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Write `text`, or its pieces one after another (never joined in memory: a paper-scale records file is
    ~100 MB), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines([text] if isinstance(text, str) else text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)  # to an open file: np.save would add ".npy" to the temporary name
