"""Read what an offline W&B run wrote (its run-*.wandb log): history rows, summary and config.

wandb >= 0.2x writes the log from its Go core and ships no Python reader, so this parses the record log
(LevelDB-style 32 KiB blocks: crc32, length, type, payload) into wandb's own protobuf `Record`s.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        block_left = BLOCK - pos % BLOCK
        if block_left < 7:
            pos += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def _items(items) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_run(run_dir: Path) -> dict[str, Any]:
    """{"history": [row, ...], "summary": {...}, "config": {...}, "group": str} of one offline run folder."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    history, summary, config, group = [], {}, {}, ""
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(rec.history.item))
        elif kind == "summary":
            summary.update(_items(rec.summary.update))
        elif kind == "config":
            config.update(_items(rec.config.update))
        elif kind == "run":
            group = rec.run.run_group or group
    return {"history": history, "summary": summary, "config": config, "group": group}


def run_info(run_dir: Path) -> pb.RunRecord:
    """The run record (name, group, job type) of one offline run folder: the last one written (wandb may write it
    again when the run is updated)."""
    infos = [r.run for r in records(next(Path(run_dir).glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"]
    assert infos, f"no run record in {run_dir}"
    return infos[-1]


def offline_runs(root: Path) -> list[Path]:
    return sorted(Path(root).rglob("offline-run-*"))
