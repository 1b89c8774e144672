"""Honest numbers on real recordings: a probing set of recorded sound (not synthesised) from Debian packages, the
default CNN trained on it, and the dissection measured with the default pipeline and with labels as captions.

    python benchmarks/real_recordings.py build  --out /tmp/real   # apt-get download + dpkg-deb -x + convert
    python benchmarks/real_recordings.py run    --out /tmp/real   # train, dissect and table below, in turn
    python benchmarks/real_recordings.py train  --out /tmp/real   # train.py data=folder (the default CNN)
    python benchmarks/real_recordings.py dissect --out /tmp/real  # dissect.py x2 (default, captioner=labels)
    python benchmarks/real_recordings.py table  --out /tmp/real   # the table from the written results

`build` fetches the packages in SOURCES with `apt-get download` (nothing is installed), unpacks them with
`dpkg-deb -x`, picks each class's files by path pattern, converts them (soundfile; mono; resampled with
torchaudio.functional.resample; leading silence cut; at most --seconds long) into the `data=folder` layout
<out>/recordings/<class>/<package>__<folder>__<file>.wav, drops files whose converted audio repeats another's,
and writes <out>/manifest.csv: each clip's class, package, version, archive component and licence (from the
package's copyright file). Every clip is one source file, so the folder's stratified folds split by file (velocity
layers of one drum are separate files: they may fall in different folds).

Per layer, `run` prints what each number measures:
  last-layer top-1  share of output units whose top DB concept (describe's closed set) is the unit's own class
                    (paper Table 2 protocol; output layer only)
  simulation        Pearson r, over held-out clips, between a unit's activation and the MiniLM similarity of its
                    description to each clip's caption (next to the same with shuffled descriptions)
  uninterpretable   share of units none of whose caption clusters (11 K-means clusters of caption sentences) is
                    shared by K'=3 of their top-5 clips
  top-5 clips of one class   mean share of a unit's top-5 clips from their most common class (no captions)
  description names it       share of units whose description names that most common class
With `captioner=labels` the captions name each clip's class: those numbers are not comparable to the paper's
Table 2 (a captioner that knows the classes measures the pipeline, not description quality).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
AUDIO = (".wav", ".ogg", ".flac", ".aiff", ".aif")
# Hydrogen kits recorded from acoustic instruments (the electronic ones are left out: synthesised)
ACOUSTIC_KITS = (r"(ColomboAcousticDrumkit|ForzeeStereo|Millo-Drums_v\.1|Millo_MultiLayered[23]|The Black Pearl 1\.0"
                 r"|BJA_Pacific|Gimme A Hand 1\.0|circAfrique v4)")
KIT = rf"usr/share/hydrogen/data/drumkits/{ACOUSTIC_KITS}/"


@dataclass(frozen=True)
class Source:
    """Files of one class in one package: their path (inside the unpacked package) matches `pattern`
    (case-insensitive) and not `exclude`."""

    cls: str
    package: str
    pattern: str
    exclude: str = r"$^"


SOURCES = (
    Source("kick", "hydrogen-drumkits", KIT + r"[^/]*(kick|bassdrum|\bbd[_ -]?\d)[^/]*$"),
    Source("snare", "hydrogen-drumkits", KIT + r"[^/]*(snare|\bsd_\d|\bsn\d?_)[^/]*$"),
    Source("hihat", "hydrogen-drumkits", KIT + r"[^/]*(hihat|hi-hat|\bhh|\bho_)[^/]*$"),
    Source("cymbal", "hydrogen-drumkits", KIT + r"[^/]*(crash|ride|china|splash|\bcc_|\brc_|\brd\d?_)[^/]*$",
           exclude=r"sidestick"),
    Source("tom", "hydrogen-drumkits", KIT + r"[^/]*(tom|\bft_|\bt[12]_)[^/]*$"),
    Source("cowbell", "hydrogen-drumkits", KIT + r"[^/]*(cowbell|\bcb\d?_|mc_cb)[^/]*$"),
    Source("hand_drum", "hydrogen-drumkits", KIT + r"[^/]*(djembe|bongo|conga)[^/]*$"),
    Source("keyboard", "bucklespring-data", r"usr/share/buckle/wav/[0-9a-f]+-0\.wav$"),  # key presses (IBM Model M)
    Source("speech", "asterisk-core-sounds-en-wav", r"usr/share/asterisk/sounds/en_US_f_Allison/[^/]+\.wav$"),
    Source("bird", "tuxpaint-stamps-default", r"stamps/animals/birds/[^/]+\.ogg$", exclude=r"_desc"),
    Source("mammal", "tuxpaint-stamps-default", r"stamps/animals/mammals/.+\.ogg$", exclude=r"_desc"),
    Source("scream", "wesnoth-1.16-data",
           r"data/core/sounds/(human|human-female|human-old|dwarf|elf)-(hit|die)(-\d)?\.(ogg|wav)$"),
)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kw)


# ------------------------------------------------------------------------------------------------- build
def package_info(package: str) -> dict[str, str]:
    """Version and archive component (main / contrib / non-free, from the pool path) of a package."""
    show = run(["apt-cache", "show", package], capture_output=True).stdout.split("\n\n")[0]
    fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", show, flags=re.M))
    return {"version": fields["Version"], "component": fields["Filename"].split("/")[1]}


def licences(unpacked: Path, package: str) -> str:
    """The distinct `License:` short names of the package's machine-readable copyright file."""
    text = (unpacked / "usr/share/doc" / package / "copyright").read_text(encoding="utf-8", errors="replace")
    names = dict.fromkeys(m.strip() for m in re.findall(r"^License:[ \t]*(\S[^\n]*)$", text, flags=re.M))
    return "; ".join(names) or "see /usr/share/doc/" + package + "/copyright"


def unpack(package: str, cache: Path) -> Path:
    """apt-get download + dpkg-deb -x into cache/x/<package> (once)."""
    target = cache / "x" / package
    if not target.is_dir():
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob(f"{package}_*.deb")):
            run(["apt-get", "download", "-q", package], cwd=debs)
        (deb,) = debs.glob(f"{package}_*.deb")
        tmp = target.with_name(target.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)  # dpkg-deb -x makes only the last folder of the path
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.rename(target)
    return target


def select(files: list[str], pattern: str, exclude: str, limit: int) -> list[str]:
    """The sorted paths matching `pattern` and not `exclude`; at most `limit`, spread evenly over the list (so a
    class drawn from several drum kits keeps every kit)."""
    hits = sorted(f for f in files if re.search(pattern, f, flags=re.I) and not re.search(exclude, f, flags=re.I)
                  and f.lower().endswith(AUDIO))
    if len(hits) > limit:
        hits = [hits[i] for i in np.linspace(0, len(hits) - 1, limit).round().astype(int)]
    return hits


def convert(src: Path, dst: Path, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """src (any soundfile format) -> dst: 16-bit mono WAV at `sample_rate`, from the first sample within 40 dB of
    the peak, at most `seconds` long; the level is kept (no normalisation). Returns the written samples."""
    wave, sr = sf.read(str(src), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        from and_lightning.data.audio_io import resample

        wave = resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sample_rate).numpy()
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        raise ValueError(f"{src}: silent or empty")
    start = int(np.argmax(np.abs(wave) >= peak * 0.01))
    wave = np.clip(wave[start:start + int(seconds * sample_rate)], -1.0, 1.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), wave, sample_rate, subtype="PCM_16")
    return sf.read(str(dst), dtype="int16")[0]


def build_folder(picked: list[tuple[str, str, Path, dict[str, str]]], out: Path, seconds: float) -> list[dict]:
    """Convert (class, package, source file, package facts) into out/recordings/<class>/<package>__<folder>__<name>.wav,
    skipping files whose converted audio repeats an earlier one; writes out/manifest.csv; returns its rows."""
    rows, seen = [], {}
    for cls, package, src, facts in picked:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{src.parent.name}__{src.stem}")
        dst = out / "recordings" / cls / f"{package}__{name}.wav"
        try:
            digest = hashlib.sha256(convert(src, dst, seconds).tobytes()).hexdigest()
        except (ValueError, RuntimeError, sf.LibsndfileError) as e:
            print(f"skipped {src}: {e}")
            dst.unlink(missing_ok=True)
            continue
        if digest in seen:
            print(f"skipped {src}: same audio as {seen[digest]}")
            dst.unlink()
            continue
        seen[digest] = src.name
        rows.append({"clip": dst.relative_to(out / "recordings").as_posix(), "class": cls, "package": package,
                     "source_file": src.as_posix().split(f"/x/{package}/", 1)[-1], **facts})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def build(out: Path, per_class: int, seconds: float) -> None:
    picked = []
    for package in dict.fromkeys(s.package for s in SOURCES):
        root = unpack(package, out)
        facts = {**package_info(package), "licence": licences(root, package)}
        if facts["component"] != "main":
            raise SystemExit(f"{package} is in {facts['component']}, not main")
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for s in (s for s in SOURCES if s.package == package):
            chosen = select(files, s.pattern, s.exclude, per_class)
            print(f"{s.cls:<10} {package:<30} {len(chosen)} files")
            picked += [(s.cls, package, root / f, facts) for f in chosen]
    rows = build_folder(picked, out, seconds)
    counts = {c: sum(r["class"] == c for r in rows) for c in dict.fromkeys(s.cls for s in SOURCES)}
    print(f"{len(rows)} clips in {len(counts)} classes: {counts}; manifest: {out / 'manifest.csv'}")


# --------------------------------------------------------------------------------------------------- run
def cli(script: str, out: Path, overrides: list[str], log: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / script), *overrides]
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    print(f"  {time.time() - start:.0f} s, log {log}", flush=True)
    if proc.returncode:
        raise SystemExit(f"{script} failed; see {log}")


def data_overrides(out: Path, seconds: float) -> list[str]:
    return ["data=folder", f"data.index.root={out / 'recordings'}", "data.name=real", f"data.clip_seconds={seconds}",
            f"paths.root_dir={out / 'work'}", "logger=csv"]


RUNS = {"default": [], "labels": ["captioner=labels"]}


def train(out: Path, seconds: float, epochs: int) -> None:
    cli("train.py", out, [*data_overrides(out, seconds), f"trainer.max_epochs={epochs}"], out / "train.log")


def dissect(out: Path, seconds: float) -> None:
    for name, extra in RUNS.items():
        cli("dissect.py", out, [*data_overrides(out, seconds), *extra, f"hydra.run.dir={out / 'dissect' / name}"],
            out / f"dissect_{name}.log")


def unit_classes(descriptions: Path) -> dict[str, tuple[float, float]]:
    """Per layer: the mean share of a unit's top clips that belong to their most common class (clip ids are
    <class>/<file>: how class-specific the units are, whatever the captions say), and the share of units whose
    description names that class."""
    rows: dict[str, list[tuple[float, bool]]] = {}
    for line in descriptions.read_text().splitlines():
        r = json.loads(line)
        classes = [c.split("/", 1)[0] for c in r["top_clips"]]
        major = max(classes, key=classes.count)
        named = re.search(rf"\b{major.replace('_', ' ')}", r["description"], flags=re.I) is not None
        rows.setdefault(r["layer"], []).append((classes.count(major) / len(classes), named))
    return {layer: (float(np.mean([p for p, _ in v])), float(np.mean([n for _, n in v]))) for layer, v in rows.items()}


def table(out: Path) -> None:
    """Per layer: last-layer top-1 (output layer), simulation Pearson r (vs shuffled), uninterpretable share, the
    class purity of the units' top clips and how often the description names that class."""
    lines = ["| captions | layer | last-layer top-1 | simulation r (shuffled) | uninterpretable (K'=3) | "
             "top-5 clips of one class | description names it |", "|---|---|---|---|---|---|---|"]
    for name in RUNS:
        result = json.loads((out / "dissect" / name / "dissection.json").read_text())
        m = result["metrics"]
        layers = result["layers"]
        units = unit_classes(Path(result["descriptions"]))
        for layer in layers:
            top1 = m.get("dissect/last_layer_top1") if layer == layers[-1] else None
            mark = " *" if result.get("captions") == "labels" else ""
            lines.append(f"| {name}{mark} | {layer} | {'' if top1 is None else f'{top1:.1%}'} | "
                         f"{m[f'eval/sim/{layer}/pearson']:.3f} ({m[f'eval/sim/{layer}/pearson_shuffled']:.3f}) | "
                         f"{m[f'eval/interp/{layer}/uninterpretable_k3']:.1%} | {units[layer][0]:.0%} | "
                         f"{units[layer][1]:.0%} |")
        if result.get("note"):
            lines.append(f"\n* {result['note']}\n")
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["build", "run", "train", "dissect", "table"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/real"))
    ap.add_argument("--per-class", type=int, default=40, help="at most this many files per class")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length (longer files are cut)")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    out = args.out.resolve()
    if args.step == "build":
        build(out, args.per_class, args.seconds)
    if args.step in ("run", "train"):
        train(out, args.seconds, args.epochs)
    if args.step in ("run", "dissect"):
        dissect(out, args.seconds)
    if args.step in ("run", "dissect", "table"):
        table(out)


if __name__ == "__main__":
    main()
