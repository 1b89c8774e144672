"""exemplars=window end to end on the session-trained CNN (Hydra compose + dissect(cfg), stage by stage): peak
times in the store, every window captioned from its own audio, summaries made of window captions, records
carrying `top_windows`; exemplars=clip keeps the whole-clip dissection."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from and_lightning.data.windows import Window
from and_lightning.describe.exemplars import record_windows
from and_lightning.describe.rule_summary import extractive_summary
from and_lightning.dissection import dissect
from and_lightning.stages.caption import read_captions
from and_lightning.store.activations import ActivationStore
from and_lightning.analysis.html_report import asset_name
from conftest import compose_cfg
from test_html_report import audio_durations, browser  # noqa: F401  (the real headless Chromium fixture)


def run(trained_cnn, stage: str, *overrides: str) -> dict:
    ckpt, root, base = trained_cnn
    return dissect(compose_cfg("dissect", root, [*base, f"ckpt_path={ckpt}", f"stage={stage}", "logger=none",
                                                 "layers=[conv2,head]", *overrides]))


@pytest.mark.slow  # 30 s alone on 2 idle cores (67 s at load 20): collect, caption and describe once each
def test_window_exemplars_are_captioned_summarised_and_played(trained_cnn, browser):
    window = ["exemplars=window", "exemplars.window_seconds=0.3"]
    for stage in ("collect", "caption"):
        run(trained_cnn, stage, *window)
    result = run(trained_cnn, "describe", *window)
    store = ActivationStore.open(result["store"])
    assert store.manifest["preprocessing"]["peak_times"] is True
    out = Path(result["dissection_dir"])
    captions = read_captions(out / "captions.jsonl")
    records = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    windows = record_windows(records)
    assert set(windows) == {(r["layer"], r["unit"]) for r in records}
    cut = 0
    for r in records:
        for side in ("top", "bottom"):
            assert len(r[f"{side}_windows"]) == len(r[f"{side}_clips"])
        peaks = store.peak(r["layer"])
        for w, cid in zip(windows[r["layer"], r["unit"]], r["top_clips"]):
            peak = float(peaks[store.row_of(cid), r["unit"]])
            if r["layer"] == "head":  # no time axis: the whole clip
                assert (w.start, w.end) == (0.0, 1.0)
                continue
            assert w.end - w.start == pytest.approx(0.3) and w.start - 1e-3 <= peak <= w.end + 1e-3
            cut += captions[w.id] != captions[cid]
        # the summary is made of the windows' captions, not the clips'
        texts = [captions[Window(c, s, e).id] for c, (s, e) in zip(r["top_clips"], r["top_windows"])]
        if r["layer"] != "head":
            assert r["summary_high"] == extractive_summary(texts, min_share=0.5, clean=True)
    assert cut > 0  # some windows sound unlike their whole clip

    # the report of this dissection, in a real headless Chromium: conv2's players play their 0.3 s windows, the
    # head's (no time axis) their whole 1 s clips, and each conv2 clip shows the unit's activation curve
    page = Path(run(trained_cnn, "report", *window)["html_report"])
    browser.session("POST", "/url", {"url": page.as_uri()})
    assert browser.wait_for("return document.readyState === 'complete'")
    played = dict(audio_durations(browser))
    conv2 = {f"{asset_name(w.id)}.opus" for (layer, _), ws in windows.items() if layer == "conv2" for w in ws}
    assert played and conv2 & set(played) and all(
        seconds == pytest.approx(0.3 if name in conv2 else 1.0, abs=0.01) for name, seconds in played.items())
    assert browser.js("return document.querySelectorAll('.clip svg polyline').length") >= len(conv2 & set(played))


def test_clip_exemplars_keep_whole_clips(trained_cnn):
    result = run(trained_cnn, "collect")
    assert "peak_times" not in ActivationStore.open(result["store"]).manifest["preprocessing"]
    assert not list(Path(result["store"]).rglob("peak.f32.npy"))


def test_a_bad_window_length_is_a_clear_error(trained_cnn):
    with pytest.raises(ValueError, match=r"exemplars.window_seconds=-1: expected a number of seconds > 0"):
        run(trained_cnn, "collect", "exemplars=window", "exemplars.window_seconds=-1")
