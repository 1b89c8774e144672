"""The README's main job exactly as a newcomer runs it: `python train.py && python dissect.py`, no arguments."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_train import run_cli
from wandb_offline import offline_runs, read_run


@pytest.mark.slow
def test_default_train_then_dissect(tmp_path):
    run_cli("train.py", [], cwd=tmp_path, timeout=1800)
    (run,) = offline_runs(tmp_path / "logs" / "train")
    acc = read_run(run)["summary"]["test/acc"]
    assert acc >= 0.90, f"default CNN on synth: test accuracy {acc:.3f} < 0.90"

    out = run_cli("dissect.py", [], cwd=tmp_path, timeout=1800).stdout
    top1 = float(re.search(r"last layer 'head' \(db/cos_cubed\): top-1 ([\d.]+)%", out).group(1))
    assert top1 >= 80.0, out[-3000:]
    (result,) = (tmp_path / "logs" / "dissect").rglob("dissection.json")
    rows = Path(json.loads(result.read_text())["descriptions"])
    rows = [json.loads(line) for line in (tmp_path / rows).read_text().splitlines()]
    assert len(rows) == 16 + 32 + 64 + 128 + 10 and all(r["description"] for r in rows)
