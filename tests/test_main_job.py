"""The README's main job exactly as a newcomer runs it: `python train.py && python dissect.py`, no arguments."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
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
    written = json.loads(result.read_text())
    rows = [json.loads(line) for line in (tmp_path / written["descriptions"]).read_text().splitlines()]
    assert len(rows) == 16 + 32 + 64 + 128 + 10 and all(r["description"] for r in rows)

    # descriptions.jsonl of the run: the dissection's records, each with the unit's scores of this evaluation in
    # the place of describe's empty placeholder
    described = (tmp_path / written["dissection_dir"] / "descriptions.jsonl").read_text().splitlines()
    assert [json.dumps({**r, "scores": {}}) for r in rows] == described
    assert all({"det_auprc", "det_f1", "sim_pearson", "gt_f1", "poly_classes"} <= set(r["scores"]) for r in rows)
    with open(result.parent / "evaluate" / "detection.csv", newline="") as f:
        table = {t["layer"]: float(t["auprc"]) for t in csv.DictReader(f)}
    for layer, auprc in table.items():  # a layer's AUPRC is its units' mean
        units = [r["scores"]["det_auprc"] for r in rows if r["layer"] == layer]
        assert np.mean([a for a in units if a is not None]) == pytest.approx(auprc, abs=1e-12), layer
    gt = [r["scores"]["gt_f1"] for r in rows if r["scores"]["gt_f1"] is not None]
    assert gt and all(0.0 <= f <= 1.0 for f in gt) and len(set(gt)) > 1

    # the HTML report stays small: short Opus files and WebP spectrograms beside the page, never inlined
    page = tmp_path / written["html_report"]
    files = [p for p in page.parent.rglob("*") if p.is_file()]
    suffixes = sorted({p.suffix for p in files})
    assert suffixes == [".html", ".opus", ".webp"], suffixes
    opus = {p.stem for p in files if p.suffix == ".opus"}
    assert len(opus) > 100 and opus == {p.stem for p in files if p.suffix == ".webp"}
    assert all(f'src="audio/{stem}.opus"' in page.read_text() for stem in opus)
    assert page.stat().st_size < 1_000_000  # nothing inlined
    total = sum(p.stat().st_size for p in files)
    assert total < 5_000_000, f"default run's HTML report is {total / 1e6:.2f} MB (issue 16: under 5 MB)"
