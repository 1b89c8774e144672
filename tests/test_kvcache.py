"""The on-disk key-value cache: round trips, persistence, a writer killed mid-run, concurrent async/thread use."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from and_lightning.store.hashing import hash_obj
from and_lightning.store.kvcache import CacheError, KVCache


def test_round_trip_and_persistence(tmp_path):
    path = tmp_path / "sub" / "kv.sqlite"
    values = {"s": "caption text", "d": {"summary": "x", "concepts": ["a", "b"]}, "n": 3, "l": [1.5, None]}
    with KVCache(path) as cache:
        for name, value in values.items():
            cache.put(KVCache.key_for(name), value)
        assert KVCache.key_for("s") == hash_obj("s")
        assert KVCache.key_for("s") in cache and hash_obj("missing") not in cache
        assert cache.get(hash_obj("missing"), "default") == "default"
    with KVCache(path) as reopened:
        assert {name: reopened.get(KVCache.key_for(name)) for name in values} == values
        assert len(reopened) == 4 and reopened.integrity_ok()


def test_rejects_keys_that_are_not_sha256(tmp_path):
    with KVCache(tmp_path / "kv.sqlite") as cache, pytest.raises(ValueError, match="sha256"):
        cache.put("my-key", 1)


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "kv.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match=r"kv.sqlite: cannot open the cache"):
        KVCache(bad)


WRITER = textwrap.dedent(
    """
    import sys
    from and_lightning.store.kvcache import KVCache
    cache = KVCache(sys.argv[1])
    for i in range(100000):
        cache.put(KVCache.key_for(i), {"i": i, "pad": "x" * 20000})
        print(i, flush=True)
    """
)


def test_writer_killed_mid_run_leaves_a_valid_cache_with_every_finished_entry(tmp_path):
    path = tmp_path / "kv.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the process we started, by its id
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with KVCache(path) as cache:
        assert cache.integrity_ok()
        assert len(cache) >= len(committed)
        for i in committed:
            assert cache.get(KVCache.key_for(i)) == {"i": i, "pad": "x" * 20000}


def test_shared_by_async_tasks_and_threads(tmp_path):
    cache = KVCache(tmp_path / "kv.sqlite")

    async def writer(i: int) -> None:
        await asyncio.sleep(0)
        if i % 2:
            await asyncio.to_thread(cache.put, KVCache.key_for(i), i)
        else:
            cache.put(KVCache.key_for(i), i)
        assert cache.get(KVCache.key_for(i)) == i

    async def main() -> None:
        await asyncio.gather(*(writer(i) for i in range(60)))

    asyncio.run(main())
    assert len(cache) == 60 and sorted(cache.get(k) for k in cache.keys()) == list(range(60))
    cache.close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from and_lightning.store.kvcache import KVCache
    cache = KVCache(sys.argv[1])
    with cache.claim(sys.argv[2]) as mine:
        print("held" if mine else "busy", flush=True)
        time.sleep(600)
    """
)


def test_a_claim_excludes_other_processes_and_threads_and_dies_with_its_holder(tmp_path):
    path, key = tmp_path / "kv.sqlite", KVCache.key_for("entry")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), key], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with KVCache(path) as cache:
            with cache.claim(key) as mine:
                assert not mine  # another process holds it
            with cache.claim(KVCache.key_for("other entry")) as other:
                assert other
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the process we started, by its id
        proc.wait(timeout=10)
        proc.stdout.close()
    with KVCache(path) as cache, cache.claim(key) as mine:
        assert mine  # a killed holder leaves no stale claim
        seen: list[bool] = []

        def other_thread() -> None:
            with KVCache(path) as mine_too, mine_too.claim(key) as got:
                seen.append(got)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert seen == [False]
