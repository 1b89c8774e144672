"""On-disk key-value cache (sqlite3 in WAL mode) for LLM replies and captions.

Each `put` is its own committed transaction, so a process killed mid-run keeps every entry that finished and
never leaves a corrupt file. Keys are sha256 hex strings (see `and_lightning.store.hashing.hash_obj`); values
are any JSON-serialisable object. One instance may be shared by the async tasks and threads of a process;
several processes may open the same file (sqlite locking, `busy_timeout`). Keep the file on a local disk:
sqlite's WAL mode does not work on network file systems.

Processes sharing a cache share work through `claim(key)`: whoever holds an entry's claim computes it, the others
skip it and read it from the cache once the claim is released. Claims are `filelock` locks (flock), released by
the operating system when their holder dies, so a killed run never leaves a stale claim behind.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from filelock import FileLock, Timeout

from and_lightning.store.hashing import hash_obj

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
IDENTITY_FIELDS = ("_target_", "name", "model", "prompt")


def semantic_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a backend's config (a mapping with `_target_`) that changes its results, for keys: `_target_`,
    name, model, prompt and the fields its class lists in `semantic_fields` (sampling parameters), never how the
    results are fetched (server, timeouts, retries, concurrency, cache paths). A class listing none keeps all."""
    from hydra.utils import get_class

    fields = getattr(get_class(cfg["_target_"]), "semantic_fields", None)
    if fields is None:
        return dict(cfg)
    return {k: cfg[k] for k in (*IDENTITY_FIELDS, *fields) if k in cfg}


class CacheError(RuntimeError):
    """Raised when a cache file cannot be opened or holds an unreadable entry."""


class KVCache:
    """A persistent map from sha256 keys to JSON values, stored in one sqlite file at `path`."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._claims: dict[str, FileLock] = {}
        # one process at a time sets the file up: switching a new file to WAL fails at once ("database is locked"),
        # without waiting for busy_timeout, when another process is creating it too
        opening = FileLock(self._claims_dir / "open.lock", timeout=busy_timeout_s)
        try:
            with opening:
                self._db = sqlite3.connect(
                    str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a committed write survives a killed process (not a power cut); never corrupts.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (sqlite3.Error, Timeout) as e:
            raise CacheError(f"{self.path}: cannot open the cache as sqlite ({e})") from e

    @property
    def _claims_dir(self) -> Path:
        """`<cache>.claims/`: the lock files of the claims and of opening the file (FileLock makes the folder)."""
        return self.path.with_name(self.path.name + ".claims")

    @staticmethod
    def key_for(obj: Any) -> str:
        """The cache key of a JSON-like object: sha256 of its canonical JSON."""
        return hash_obj(obj)

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` if there is none."""
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except json.JSONDecodeError as e:
            raise CacheError(f"{self.path}: entry {key} is not valid JSON ({e})") from e

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON-serialisable) under `key` and commit at once."""
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """Store each (key, value) as `put` does, all in one committed transaction."""
        rows = []
        for key, value in items:
            if not _KEY_RE.match(key):
                raise ValueError(f"cache key must be a sha256 hex digest (64 lowercase hex chars), got {key!r}")
            rows.append((key, json.dumps(value, sort_keys=True)))
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Claim `key` without waiting: yields True while this process holds the claim, False when another process
        or thread holds it (then skip the entry, and look for it in the cache later). Keys share 256 lock files
        (`<cache>.claims/<first two hex digits>.lock`); a thread's tasks share its claims."""
        with self._lock:
            lock = self._claims.get(key[:2])
            if lock is None:
                lock = self._claims[key[:2]] = FileLock(self._claims_dir / f"{key[:2]}.lock")
        try:
            lock.acquire(blocking=False)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM kv ORDER BY key")]

    def integrity_ok(self) -> bool:
        """True when sqlite's own integrity check passes."""
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "KVCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KVCache({str(self.path)!r})"
