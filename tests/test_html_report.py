"""The static HTML report: escaping of untrusted text, assets, and the page in a real headless Chromium.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with a few urllib calls (no extra package).
Install: apt-get install -y chromium chromium-driver. Set AND_SKIP_BROWSER_TESTS=1 to skip the browser test
on a machine without them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from and_lightning.analysis.html_report import FILTER_SCRIPT, asset_name, build_html_report, curve_points, script_hash
from and_lightning.data.clips import ClipRecord
from and_lightning.data.windows import Window
from and_lightning.stages.evaluate import html_report_stage

EVIL_CAPTION = '"><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
EVIL_DESCRIPTION = "</p><script>window.pwned = 3</script> A loud hiss & <b>bold</b>"


def write_clips(folder: Path, n: int = 4, sr: int = 16000) -> dict[str, ClipRecord]:
    """n short sine clips; the last id is hostile (path characters and markup)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for i in range(n):
        cid = f"clip-{i}" if i < n - 1 else '../"<evil>'
        path = folder / f"c{i}.wav"
        t = np.arange(sr // 2) / sr
        sf.write(path, (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32), sr)
        clips[cid] = ClipRecord(cid, str(path), 0, 1, {})
    return clips


def make_records(ids: list[str]) -> list[dict]:
    return [
        {"layer": "conv1", "unit": 0, "top_clips": ids[:2], "top_values": [0.9, 0.5], "description": EVIL_DESCRIPTION,
         "closed_concepts": [{"concept": "noise_hiss", "score": 0.4}, {"concept": "<i>x</i>", "score": 0.1}],
         "adjectives": ["loud"], "nouns": ["hiss"], "scores": {}},
        {"layer": "conv1", "unit": 1, "top_clips": ids[1:3], "top_values": [0.7, 0.6], "description": "a quiet tone",
         "closed_concepts": [{"concept": "pure_tone", "score": 0.3}], "adjectives": ["quiet"], "nouns": [],
         "scores": {}},
        {"layer": "head", "unit": 0, "top_clips": ids[2:], "top_values": [1.5, 1.2], "description": "buzzy chord",
         "closed_concepts": [{"concept": "harmonic_tone", "score": 0.8}], "adjectives": [], "nouns": ["chord"],
         "scores": {"hit": 1.0}},
    ]


class ScriptCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.tags, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


@pytest.fixture
def report(tmp_path):
    clips = write_clips(tmp_path / "src")
    ids = list(clips)
    captions = {ids[0]: EVIL_CAPTION, ids[1]: "a tone & more", ids[2]: "buzz"}
    page = html_report_stage({"audio_per_neuron": 2, "max_neurons": None}, tmp_path / "report", make_records(ids),
                             clips, captions, 16000, 0.5, metrics={"eval/<gt>/f1": 0.5},
                             neuron_scores={("conv1", 0): {"sim_pearson": 0.25, "gt_true": ["pitch=high"],
                                                           "detection_auprc": 0.4, "<k>": 1.0},
                                            ("conv1", 1): {"detection_auprc": 0.9, "sim_pearson": float("nan")},
                                            ("head", 0): {"detection_auprc": 0.6}})
    return page, ids


def test_every_untrusted_string_is_escaped_and_only_our_script_exists(report):
    page, ids = report
    text = page.read_text(encoding="utf-8")
    parser = ScriptCollector()
    parser.feed(text)
    assert parser.scripts == [FILTER_SCRIPT]  # no injected script element anywhere
    assert not any(tag == "img" and "onerror" in attrs for tag, attrs in parser.tags)
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "&lt;i&gt;x&lt;/i&gt;" in text and "eval/&lt;gt&gt;/f1" in text and "sim_pearson = 0.25" in text
    assert '<option value="&lt;k&gt;">&lt;k&gt;</option>' in text and "\\u003ck\\u003e" in text  # menu, data-scores
    csp = next(a["content"] for t, a in parser.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert script_hash(FILTER_SCRIPT) in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


def test_assets_are_beside_the_page_under_hashed_names(report):
    page, ids = report
    for cid in ids:  # every clip is some neuron's top clip
        stem = asset_name(cid)
        audio, image = page.parent / "audio" / f"{stem}.opus", page.parent / "spec" / f"{stem}.webp"
        info = sf.info(str(audio))
        assert (info.format, info.subtype, info.samplerate, info.frames) == ("OGG", "OPUS", 16000, 8000)
        assert audio.stat().st_size < 3000  # 0.5 s at ~24 kbit/s; as 16-bit WAV it was 16 kB
        head = image.read_bytes()
        assert head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) < 5000
        assert f'src="audio/{stem}.opus"' in page.read_text()
    assert len(list((page.parent / "audio").iterdir())) == len(ids)  # the hostile id wrote no file elsewhere
    assert not (page.parent.parent / "evil").exists()


def test_same_inputs_give_the_same_report_bytes(report, tmp_path):
    page, ids = report
    clips = write_clips(tmp_path / "src")  # same clips, same content
    again = build_html_report(make_records(ids), {c: r.path for c, r in clips.items()}, {}, tmp_path / "again",
                              16000, 0.5, audio_per_neuron=2)
    for sub in ("audio", "spec"):
        first = {p.name: p.read_bytes() for p in (page.parent / sub).iterdir()}
        assert first == {p.name: p.read_bytes() for p in (again.parent / sub).iterdir()}


def test_curve_points_against_hand_computed_values():
    # t 0..2 s over 100 px; values 1..3 over 20 px less 2 px padding: y = 2 + (1 - (v - 1) / 2) * 16
    assert curve_points([0.0, 1.0, 2.0], [1.0, 3.0, 2.0], 2.0, 100, 20) == "0.0,18.0 50.0,2.0 100.0,10.0"
    assert curve_points([0.5, 1.5], [4.0, 4.0], 2.0, 100, 20) == "25.0,10.0 75.0,10.0"  # flat: the middle
    assert curve_points([0.0, 1.0, 2.0], [1.0, float("nan"), 3.0], 2.0, 100, 20, pad=0) == "0.0,20.0 100.0,0.0"
    assert curve_points([], [], 2.0, 100, 20) == ""
    with pytest.raises(ValueError, match=r"as many times as values, got shapes \(3,\) and \(2,\)"):
        curve_points([0, 1, 2], [1, 2], 2.0, 100, 20)


def test_max_neurons_limits_the_page(tmp_path):
    clips = write_clips(tmp_path / "src")
    page = build_html_report(make_records(list(clips)), {c: r.path for c, r in clips.items()}, {}, tmp_path / "r",
                             16000, 0.5, max_neurons=1, audio_per_neuron=1)
    assert page.read_text().count('class="neuron"') == 1
    assert len(list((tmp_path / "r" / "audio").iterdir())) == 1
    page = build_html_report(make_records(list(clips)), {c: r.path for c, r in clips.items()}, {}, tmp_path / "s",
                             16000, 0.5, max_per_layer=1, audio_per_neuron=1)
    assert [h.split("</h2>")[0] for h in page.read_text().split("<h2>")[1:]] == ["conv1 #0", "head #0"]


def test_every_template_is_package_data():
    """A non-editable install carries the report's templates: pyproject's package-data covers every file of the
    package that is not Python."""
    repo = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p for p in (repo / "and_lightning").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {p.name for p in files} >= {"report.html", "filter.js"}
    for p in files:
        assert any(p.is_relative_to(repo / pkg.replace(".", "/"))
                   and any(p.relative_to(repo / pkg.replace(".", "/")).match(g) for g in pats)
                   for pkg, pats in globs.items()), p


WINDOW_CAPTION = "a <rising> chirp in the window"
FRAMES = np.linspace(0.025, 0.475, 10)  # the unit's curve: 10 frames over the 0.5 s clips


def bump(peak: float) -> np.ndarray:
    return np.exp(-((FRAMES - peak) ** 2) / 0.005)


@pytest.fixture
def windowed(tmp_path):
    """conv1 #0 has windows and curves for its two top clips; head #0 has curves only; the rest neither."""
    clips = write_clips(tmp_path / "src")
    ids = list(clips)
    wins = [Window(ids[0], 0.1, 0.3), Window(ids[1], 0.25, 0.45)]
    captions = {wins[0].id: WINDOW_CAPTION, ids[0]: "whole clip 0", ids[1]: "whole clip 1"}
    page = build_html_report(make_records(ids), {c: r.path for c, r in clips.items()}, captions,
                             tmp_path / "report", 16000, 0.5, audio_per_neuron=2,
                             windows={("conv1", 0): wins},
                             curves={("conv1", 0): [(FRAMES, bump(0.2)), (FRAMES, bump(0.35))],
                                     ("head", 0): [(FRAMES, bump(0.1)), (FRAMES, -bump(0.3))]})
    return page, ids, wins


def test_windows_get_their_own_short_audio_spectrogram_and_caption(windowed):
    page, ids, wins = windowed
    text = page.read_text()
    for w in wins:
        stem = asset_name(w.id)
        info = sf.info(str(page.parent / "audio" / f"{stem}.opus"))
        assert (info.subtype, info.frames) == ("OPUS", 3200)  # 0.2 s at 16 kHz, not the clip's 8000 frames
        assert f'src="audio/{stem}.opus"' in text and f'src="spec/{stem}.webp"' in text
    # conv1 #0 plays windows; conv1 #1 and head #0 play whole clips (ids[1] as a clip too: conv1 #1's top clip)
    assert not (page.parent / "audio" / f"{asset_name(ids[0])}.opus").exists()
    assert (page.parent / "audio" / f"{asset_name(ids[1])}.opus").exists()
    captions = [c.split("</div>")[0] for c in text.split('<div class="caption">')[1:]]
    assert captions[:3] == ["a &lt;rising&gt; chirp in the window", "whole clip 1", "whole clip 1"]
    assert text.count("<svg") == 4 and text.count("<rect") == 2  # curves: conv1 #0 and head #0; marks: windows
    assert '<rect x="48.0" y="0" width="96.0" height="40">' in text  # 0.1-0.3 s of 0.5 s over 240 px
    assert '<span class="window">0.250-0.450 s</span>' in text


def test_windows_not_aligned_with_top_clips_are_refused_with_the_unit(tmp_path):
    clips = write_clips(tmp_path / "src")
    ids, paths = list(clips), {c: r.path for c, r in clips.items()}
    build = lambda **kw: build_html_report(make_records(ids), paths, {}, tmp_path / "r", 16000, 0.5,  # noqa: E731
                                           audio_per_neuron=2, **kw)
    with pytest.raises(ValueError, match=r"windows\[\('conv1', 0\)\]: 1 given, expected one per top clip \(2\)"):
        build(windows={("conv1", 0): [Window(ids[0], 0.1, 0.3)]})
    with pytest.raises(ValueError, match="is not of top clip 'clip-0'"):
        build(windows={("conv1", 0): [Window(ids[1], 0.1, 0.3), Window(ids[0], 0.1, 0.3)]})
    with pytest.raises(ValueError, match=r"expected 0 <= start < end <= clip_seconds \(0.5\)"):
        build(windows={("conv1", 0): [Window(ids[0], 0.4, 0.7), Window(ids[1], 0.1, 0.3)]})
    with pytest.raises(ValueError, match=r"curves\[\('head', 0\)\]: 0 given"):
        build(curves={("head", 0): []})


# --------------------------------------------------------------------------------------- real Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def find_browser() -> tuple[str, str] | None:
    binary = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                   if p and os.path.exists(p)), None)
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


class WebDriver:
    """The few W3C WebDriver calls the test needs, over HTTP to a chromedriver child process."""

    def __init__(self, binary: str, driver: str, profile: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.sid = None
        deadline = time.time() + 20
        while True:
            try:
                if self.call("GET", "/status").get("ready"):
                    break
            except OSError:
                if time.time() > deadline:
                    self.close()
                    raise
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": binary, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}}}}
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()[:1000]}") from None

    def session(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def js(self, script: str):
        return self.session("POST", "/execute/sync", {"script": script, "args": []})

    def wait_for(self, script: str, timeout: float = 15.0):
        deadline = time.time() + timeout
        while True:
            value = self.js(script)
            if value or time.time() > deadline:
                return value
            time.sleep(0.1)

    def type_into(self, css: str, text: str) -> None:
        element = self.session("POST", "/element", {"using": "css selector", "value": css})
        eid = next(iter(element.values()))
        self.session("POST", f"/element/{eid}/clear", {})
        if text:
            self.session("POST", f"/element/{eid}/value", {"text": text})

    def console(self) -> list[dict]:
        return self.session("POST", "/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            if self.sid:
                self.session("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    found = find_browser()
    if found is None:
        if os.environ.get("AND_SKIP_BROWSER_TESTS") == "1":
            pytest.skip("no chromium/chromedriver and AND_SKIP_BROWSER_TESTS=1")
        pytest.fail("chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")
    wd = WebDriver(*found, tmp_path / "profile")
    yield wd
    wd.close()


def visible_neurons(wd: WebDriver) -> list[str]:
    return wd.js("return Array.from(document.querySelectorAll('.neuron')).filter(n => !n.hidden)"
                 ".map(n => n.querySelector('h2').textContent)")


def test_page_in_chromium_loads_clean_filters_and_plays(browser, report, tmp_path):
    page, ids = report
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><script>throw new Error('deliberate')</script>")
    browser.session("POST", "/url", {"url": broken.as_uri()})
    assert any("deliberate" in e["message"] for e in browser.console()), "console errors must be observable"

    browser.session("POST", "/url", {"url": page.as_uri()})
    assert browser.wait_for("return document.readyState === 'complete'")
    durations = audio_durations(browser)
    assert len(durations) == 6 and all(d == pytest.approx(0.5, abs=0.01) for _, d in durations), durations
    assert browser.wait_for("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert browser.js("return window.pwned === undefined")
    assert browser.js("return document.querySelector('.caption').textContent") == EVIL_CAPTION
    assert EVIL_DESCRIPTION in browser.js("return document.querySelector('.description').textContent")

    assert visible_neurons(browser) == ["conv1 #0", "conv1 #1", "head #0"]
    browser.type_into("#search", "quiet")
    assert visible_neurons(browser) == ["conv1 #1"]
    browser.type_into("#search", "HEAD#0")
    assert visible_neurons(browser) == ["head #0"]
    browser.type_into("#search", "noise_hiss loud")
    assert visible_neurons(browser) == ["conv1 #0"]
    assert browser.js("return document.getElementById('count').textContent") == "1 of 3 neurons"
    browser.type_into("#search", "")
    choose(browser, "layer", "head")
    assert visible_neurons(browser) == ["head #0"]
    choose(browser, "layer", "")

    # sort and filter by a score (detection_auprc: conv1 #0 0.4, conv1 #1 0.9, head #0 0.6)
    assert browser.js("return Array.from(document.querySelectorAll('#sort option')).map(o => o.value)") == \
        ["", "<k>", "detection_auprc", "hit", "sim_pearson"]
    choose(browser, "sort", "detection_auprc")
    assert visible_neurons(browser) == ["conv1 #1", "head #0", "conv1 #0"]
    choose(browser, "order", "asc")
    assert visible_neurons(browser) == ["conv1 #0", "head #0", "conv1 #1"]
    browser.type_into("#min", "0.5")
    assert visible_neurons(browser) == ["head #0", "conv1 #1"]
    browser.type_into("#max", "0.7")
    assert visible_neurons(browser) == ["head #0"]
    assert browser.js("return document.getElementById('count').textContent") == "1 of 3 neurons"
    browser.type_into("#min", "")
    browser.type_into("#max", "")
    choose(browser, "sort", "sim_pearson")  # only conv1 #0 has a (finite) value: it comes first, the rest after
    assert visible_neurons(browser) == ["conv1 #0", "conv1 #1", "head #0"]
    browser.type_into("#min", "-1")
    assert visible_neurons(browser) == ["conv1 #0"]
    choose(browser, "sort", "")  # page order again; no range applies without a score
    assert visible_neurons(browser) == ["conv1 #0", "conv1 #1", "head #0"]

    errors = [e for e in browser.console() if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def choose(wd: WebDriver, select_id: str, value: str) -> None:
    wd.js(f"const s = document.getElementById({json.dumps(select_id)}); s.value = {json.dumps(value)};"
          "s.dispatchEvent(new Event('change'))")


def audio_durations(wd: WebDriver) -> list[tuple[str, float]]:
    """(src file name, duration) of every <audio> once all have loaded their metadata ([] if one failed)."""
    ready = wd.wait_for("const a = Array.from(document.querySelectorAll('audio'));"
                        "return a.length > 0 && a.every(x => x.readyState >= 1 && x.duration > 0)")
    assert ready, wd.js("return Array.from(document.querySelectorAll('audio'))"
                        ".map(x => [x.currentSrc, x.readyState, x.error && x.error.code])")
    return [tuple(x) for x in wd.js("return Array.from(document.querySelectorAll('audio'))"
                                    ".map(x => [x.currentSrc.split('/').pop(), x.duration])")]


def test_windows_play_in_chromium_with_their_length_spectrogram_and_curve(browser, windowed):
    page, ids, wins = windowed
    browser.session("POST", "/url", {"url": page.as_uri()})
    assert browser.wait_for("return document.readyState === 'complete'")
    durations = audio_durations(browser)
    windowed_files = {f"{asset_name(w.id)}.opus" for w in wins}
    assert len(durations) == 6 and {f for f, _ in durations[:2]} == windowed_files
    for name, seconds in durations:  # read after loadedmetadata: the window's length, else the clip's
        assert seconds == pytest.approx(0.2 if name in windowed_files else 0.5, abs=0.01), (name, seconds)
    assert browser.wait_for("return Array.from(document.images).every(i => i.complete && i.naturalWidth == 192)")
    first = browser.js("const c = document.querySelector('.clip'); const p = c.querySelector('polyline');"
                       "const r = c.querySelector('rect'); const b = p.getBBox();"
                       "return [p.points.numberOfItems, b.width, b.height, r.x.baseVal.value, r.width.baseVal.value,"
                       " c.querySelector('svg').getBoundingClientRect().width,"
                       " c.querySelector('.caption').textContent]")
    assert first == [10, pytest.approx(216, abs=0.5), pytest.approx(36, abs=0.5), 48, 96, 240, WINDOW_CAPTION]
    errors = [e for e in browser.console() if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
