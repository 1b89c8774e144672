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

    # the HTML report stays small: short Opus files and WebP spectrograms beside the page, never inlined
    page = tmp_path / json.loads(result.read_text())["html_report"]
    files = [p for p in page.parent.rglob("*") if p.is_file()]
    suffixes = sorted({p.suffix for p in files})
    assert suffixes == [".html", ".opus", ".webp"], suffixes
    opus = {p.stem for p in files if p.suffix == ".opus"}
    assert len(opus) > 100 and opus == {p.stem for p in files if p.suffix == ".webp"}
    assert all(f'src="audio/{stem}.opus"' in page.read_text() for stem in opus)
    assert page.stat().st_size < 1_000_000  # nothing inlined
    total = sum(p.stat().st_size for p in files)
    assert total < 5_000_000, f"default run's HTML report is {total / 1e6:.2f} MB (issue 16: under 5 MB)"
