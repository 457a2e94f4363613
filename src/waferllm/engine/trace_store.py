"""Traced ledgers kept on disk beside the compile cache, so that a command run twice traces its costs once.

A shared trace (engine/cost.shared_ledger) is a pure function of its shapes, the traced device fields and
the code that traces it. Entries are keyed by a hash of the first two and live in a folder named by a hash
of every source file of the package, so any change to the code starts a fresh folder instead of reading a
stale cost. The CLI turns the store on with the compile cache (`--compile-cache DIR|off`: DIR/waferllm-ledgers);
library users call enable(folder) themselves. Off by default.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import waferllm

_FOLDER: list[Path | None] = [None]
FORMAT_VERSION = 1  # bump when the pickled Ledger classes change shape
KEEP_VERSIONS = 4  # code versions whose traces are kept (several checkouts may share one cache)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hex digest of every .py file of the waferllm package (paths and contents): the code that traces."""
    root = Path(waferllm.__file__).parent
    h = hashlib.sha256(str(FORMAT_VERSION).encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def enable(folder: str | Path | None) -> Path | None:
    """Keep traced ledgers under `folder` (None: off). Returns the code's own subfolder, or None if off or
    not writable (then nothing is kept: the store is a convenience, never a failure)."""
    if folder is None:
        _FOLDER[0] = None
        return None
    path = Path(folder) / code_fingerprint()
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)  # most recently used first, below
    except OSError:
        path = None
    _FOLDER[0] = path
    if path is not None:
        _prune(path.parent, keep=KEEP_VERSIONS)
    return path


def _prune(root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used code versions' folders (older code's traces are dead)."""
    try:
        olds = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    except OSError:
        return
    for d in olds[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def _file(key: tuple) -> Path | None:
    folder = _FOLDER[0]
    text = repr(key)
    if folder is None or "..." in text or " at 0x" in text:  # a truncated array or an object's address: no key
        return None
    return folder / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".pkl")


def load(key: tuple):
    """The ledger stored under `key` (hashable, with a deterministic repr), or None."""
    f = _file(key)
    if f is None:
        return None
    try:
        with open(f, "rb") as fh:
            stored_key, led = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError):
        return None
    return led if stored_key == repr(key) else None  # a hash collision reads as a miss


def save(key: tuple, led) -> None:
    """Store `led` under `key` atomically (a reader sees the whole entry or none); failures are ignored."""
    f = _file(key)
    if f is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump((repr(key), led), fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, f)
    except OSError:
        pass
