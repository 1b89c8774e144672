"""A catalogue of bad input (issue 12 item 8), each run through the real CLI (`python train.py` / `python dissect.py`
in a subprocess): every case must exit != 0 with ONE line on stderr that names the file or config field and what
was expected, no Python traceback, and nothing left that looks like a finished result. Settings are checked before
the heavy imports, so most cases end in seconds; the cases run concurrently. The module prints its tally."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from fixtures_audio import write_tone

pytestmark = pytest.mark.slow


# --- bad audio files (each joins a good class-per-subfolder dataset, in class `a`) ------------------------------
def truncated_wav(path: Path) -> None:  # cut off mid-copy: the header still promises the whole clip
    write_tone(path, sample_rate=16000, seconds=1.0, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:12000])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def not_audio(path: Path) -> None:
    path.write_text("<html>this download failed</html>\n" * 40)


def nan_samples(path: Path) -> None:
    data = np.full(16000, 0.1, np.float32)
    data[100] = np.nan
    sf.write(str(path), data, 16000, subtype="FLOAT")


def no_frames(path: Path) -> None:
    sf.write(str(path), np.zeros((0, 1), np.float32), 16000, subtype="PCM_16", format="WAV")


def dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "moved_away.wav")


FOLDER = ["data=folder", "data.index.root={root}/audio", "data.num_classes=2", "data.clip_seconds=0.5"]
COLLECT = ["stage=collect", "ckpt_path=null", "concepts=synth", *FOLDER]
SYNTH = ["data.index.clips_per_class=2", "data.batch_size=4"]  # 20 generated clips


@dataclass(frozen=True)
class Case:
    id: str
    script: str                     # train.py | dissect.py
    args: tuple[str, ...]           # {root}: the case's own folder
    names: str                      # regex the error line must match: the file or field, and what was expected
    bad_file: Callable[[Path], None] | None = None  # written as {root}/audio/a/<id>.wav

    def argv(self, root: Path) -> list[str]:
        return [sys.executable, str(REPO / self.script), f"paths.root_dir={root}", f"hydra.run.dir={root}/run",
                "logger=none", *(a.format(root=root) for a in self.args)]


def case(id: str, script: str, args: list[str], names: str, bad_file=None) -> Case:
    return Case(id, script, tuple(args), names, bad_file)


CASES = [
    # audio files
    case("truncated_wav", "dissect.py", COLLECT, r"truncated_wav\.wav: truncated audio file: its header declares "
         r"32000 bytes of samples but only 11956", truncated_wav),
    case("truncated_wav_train", "train.py", FOLDER + ["trainer.max_epochs=1", "callbacks=none"],
         r"truncated_wav_train\.wav: truncated audio file", truncated_wav),
    case("empty_file", "dissect.py", COLLECT, r"empty_file\.wav: cannot read audio", empty_file),
    case("not_audio", "dissect.py", COLLECT, r"not_audio\.wav: cannot read audio", not_audio),
    case("nan_samples", "dissect.py", COLLECT, r"nan_samples\.wav: audio contains NaN", nan_samples),
    case("no_frames", "dissect.py", COLLECT, r"no_frames\.wav: audio file is empty", no_frames),
    case("dangling_symlink", "dissect.py", COLLECT,
         r"audio/a: symbolic link\(s\) to missing files: \S+/dangling_symlink\.wav -> \S+moved_away\.wav",
         dangling_symlink),
    # settings
    case("batch_size_abc", "dissect.py", ["data.batch_size=abc"],
         r"data\.batch_size='abc': input should be a valid integer$"),
    case("batch_size_abc_train", "train.py", ["data.batch_size=abc"],
         r"data\.batch_size='abc': input should be a valid integer$"),
    case("batch_size_0", "dissect.py", ["data.batch_size=0"], r"data\.batch_size=0: input should be greater than 0"),
    case("num_workers_negative", "dissect.py", ["data.num_workers=-1"], r"data\.num_workers=-1: input should be "
         r"greater than or equal to 0"),
    case("clip_seconds_negative", "dissect.py", ["data.clip_seconds=-1"], r"data\.clip_seconds=-1: .*greater than 0"),
    case("sample_rate_0", "train.py", ["data.sample_rate=0"], r"data\.sample_rate=0: .*greater than 0"),
    case("max_epochs_negative", "train.py", ["trainer.max_epochs=-5"], r"trainer\.max_epochs=-5: .*greater than or "
         r"equal to -1"),
    case("seed_abc", "dissect.py", ["seed=abc"], r"seed='abc': input should be a valid integer"),
    case("k_0", "dissect.py", ["describe.k=0"], r"describe\.k=0: input should be greater than 0"),
    case("k_above_clips", "dissect.py", [*SYNTH, "ckpt_path=null", "describe.k=21"],
         r"describe\.k=21: expected at most the number of probing clips \(20\)"),
    case("unknown_layer", "dissect.py", [*SYNTH, "ckpt_path=null", "layers=[conv9]"],
         r"unknown layer 'conv9' for SmallCNN; available: conv1"),
    case("unknown_stage", "dissect.py", ["stage=describ"], r"stage=describ: expected one of all, collect"),
    case("unknown_reduction", "dissect.py", [*SYNTH, "ckpt_path=null", "reduction=median"],
         r"unknown reduction 'median'; expected one of"),
    case("unknown_model", "dissect.py", ["model=cnnn"], r"Could not find 'model/cnnn'; available: ast, ast_tiny"),
    case("misspelt_key", "train.py", ["data.batchsize=3"], r"Could not override 'data\.batchsize'.*Key 'batchsize' "
         r"is not in struct"),
    case("unparsable_override", "train.py", ["data.batch_size=["], r"cannot parse the override 'data\.batch_size=\['"),
    case("missing_data_root", "dissect.py", ["data=folder", "data.index.root={root}/nowhere", "data.num_classes=2",
                                             "concepts=synth", "ckpt_path=null"],
         r"\S+/nowhere: dataset root folder does not exist"),
    case("missing_checkpoint", "dissect.py", ["ckpt_path={root}/missing.pt"],
         r"ckpt_path: checkpoint file not found: \S+/missing\.pt"),
    case("finetune_without_init", "train.py", [*SYNTH, "strategy=finetune"],
         r"strategy=finetune needs strategy\.init_ckpt=<path to a checkpoint>"),
    case("missing_resume_checkpoint", "train.py", [*SYNTH, "resume={root}/none.ckpt"],
         r"resume: checkpoint file not found: \S+/none\.ckpt"),
    case("prune_in_train_mode", "train.py", [*SYNTH, "prune=concept"], r"prune=concept needs mode=unlearn"),
    case("unlearn_without_prune", "train.py", [*SYNTH, "mode=unlearn"], r"mode=unlearn needs prune=<a strategy"),
]
# Not bad input, so not in the catalogue: a stereo (or other channel count) file is mixed down to mono by design.

# files that only a finished stage writes (a finished activation store has a manifest.json)
COMPLETE_LOOKING = ("dissection.json", "captions.jsonl", "descriptions.jsonl", "evaluation.json", "index.html",
                    "activations/*/manifest.json")
RESULTS: dict[str, bool] = {}


def make_folder_dataset(root: Path, bad: Case) -> None:
    for cls, freq in (("a", 300.0), ("b", 900.0)):
        for i in range(3):
            write_tone(root / "audio" / cls / f"{i}.wav", sample_rate=16000, seconds=0.5, freq=freq * (1 + i / 10))
    if bad.bad_file:
        bad.bad_file(root / "audio" / "a" / f"{bad.id}.wav")


def run_case(c: Case, root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    make_folder_dataset(root, c)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR", "HYDRA_FULL_ERROR"):
        env.pop(var, None)
    return root, subprocess.run(c.argv(root), cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Every selected case's subprocess, run concurrently once for the module: {case id: (its root, its run)}."""
    wanted = [i.callspec.params["c"] for i in request.session.items
              if i.module is request.module and hasattr(i, "callspec") and "c" in i.callspec.params]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {c.id: pool.submit(run_case, c, tmp_path_factory.mktemp(c.id)) for c in wanted}
        yield {k: f.result() for k, f in futures.items()}
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nbad inputs with a clear error: {sum(RESULTS.values())}/{len(RESULTS)}")


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_clear_line(c, runs):
    RESULTS[c.id] = False
    root, proc = runs[c.id]
    lines = proc.stderr.strip().splitlines() or [""]
    assert proc.returncode != 0, f"accepted: exit 0\n{proc.stdout[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and re.search(c.names, lines[-1]), lines[-1]
    finished = [p for pattern in COMPLETE_LOOKING for p in root.rglob(pattern)]
    exported = list(root.glob("checkpoints/*.pt"))
    assert not finished and not exported, finished + exported
    RESULTS[c.id] = True


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    """The one-line report is the default; HYDRA_FULL_ERROR=1 shows where the error was raised."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "dissect.py"), f"paths.root_dir={tmp_path}", "data.batch_size=0",
                           f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: data.batch_size=0: input should be greater than 0"
