"""Benchmark: every stage of `dissect.py` at the paper's scale (AST-base: 37 layers, 55,306 units), random weights,
on N synthetic clips, and the same at 1/4 of the layers; optionally against a baseline code tree in the same run.

Each stage runs as its own `dissect.py stage=<stage>` process (as a user runs it), timed with /usr/bin/time: wall
seconds, CPU seconds (user + system: the steadier figure on a shared machine), peak RSS; printed with the units,
units per wall second and the wall milliseconds per unit. collect and caption run once (their code is not under
test; the later stages reuse their store and captions, as a rerun would); describe and evaluate run on a fresh copy
of that cache for each code tree, interleaved (baseline, new, baseline, new) so the machine's load hits both alike,
and their outputs (descriptions.jsonl, the evaluation tables and plots) are compared byte for byte.

    python benchmarks/paper_scale.py [--clips 300] [--model ast|beats] [--baseline /path/to/other/tree]
                                     [--no-quarter] [--work /tmp/paper_scale] [--prepare-only]

`--clips 2000` is the paper's probing-set size (the forward pass alone then takes ~10 min on 2 cores).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # the paper's models, random weights at their base shapes on 1 s clips
    "ast": ["model=ast", "model.pretrained=null", "model.max_length=100", "model.num_mel_bins=128",
            "model.config={hidden_size:768,num_hidden_layers:12,num_attention_heads:12,intermediate_size:3072}"],
    "beats": ["model=beats", "model.pretrained=null"],
}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}


def run_stage(tree: Path, root: Path, stage: str, overrides: list[str], log: Path,
              run_dir: str = "") -> dict[str, float]:
    """Run `dissect.py stage=<stage>` of code tree `tree` with AND_ROOT=root (run directory root/run-<stage> unless
    `run_dir` names another); its wall / CPU seconds and peak RSS."""
    times = log.with_suffix(".time")
    cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(times), sys.executable, "dissect.py", f"stage={stage}",
           "logger=none", f"hydra.run.dir={root}/{run_dir or 'run-' + stage}", *overrides]
    env = {**os.environ, **ENV, "AND_ROOT": str(root), "PYTHONPATH": str(tree)}
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{tree}: stage={stage} failed (exit {done.returncode}); see {log}")
    wall, user, system, rss_kb = times.read_text().split()[-4:]
    return {"wall": float(wall), "cpu": float(user) + float(system), "rss_gb": int(rss_kb) / 2**20}


def store_of(root: Path) -> dict:
    """The manifest of the (only) activation store under `root`."""
    manifests = list((root / "cache" / "activations").glob("*/manifest.json"))
    if len(manifests) != 1:
        sys.exit(f"{root}: expected one activation store, found {len(manifests)}")
    return json.loads(manifests[0].read_text())


def prepare(tree: Path, root: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """collect + caption of code tree `tree` into `root` (once: a finished root is reused with its recorded
    timings). Each tree prepares its own: the store format and the captioner change between versions."""
    record = root / "prepare.json"
    if record.is_file():
        return json.loads(record.read_text())
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    out = {stage: run_stage(tree, root, stage, overrides, root / f"{stage}.log") for stage in ("collect", "caption")}
    record.write_text(json.dumps(out))
    return out


def fresh_copy(prepared: Path, dest: Path) -> Path:
    """A copy of a prepared cache (store, captions, synthetic clips) without any describe / evaluate output."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(prepared / "cache", dest / "cache")
    return dest


def outputs(root: Path) -> dict[str, Path]:
    """The files describe and evaluate wrote under `root` (relative name -> path), run records excluded."""
    files = {}
    for d in (root / "cache" / "dissections").glob("*"):
        files.update({f"dissection/{p.relative_to(d)}": p for p in d.rglob("*") if p.is_file()
                      and p.name not in ("captions.jsonl",) and "layers" not in p.parts})
    ev = root / "run-evaluate" / "evaluate"
    files.update({f"evaluate/{p.relative_to(ev)}": p for p in ev.rglob("*") if p.is_file()})
    return files


def compare(a: Path, b: Path) -> list[str]:
    """Names of the outputs that differ (or exist on one side only) between two runs; evaluation.json lists the
    written files' paths, so it is compared with each run's root replaced by "<root>"."""
    fa, fb = outputs(a), outputs(b)
    diff = sorted(set(fa) ^ set(fb))
    for k in sorted(set(fa) & set(fb)):
        if k.endswith("evaluation.json"):
            same = fa[k].read_text().replace(str(a), "<root>") == fb[k].read_text().replace(str(b), "<root>")
        else:
            same = filecmp.cmp(fa[k], fb[k], shallow=False)
        diff += [] if same else [k]
    return diff


def line(stage: str, units: int, t: dict[str, float], ratio: str = "") -> str:
    return (f"  {stage:<9} {t['wall']:8.1f} {t['cpu']:8.1f} {units:8d} {units / t['wall']:9.0f} {t['rss_gb']:7.2f} "
            f"{1000 * t['wall'] / units:8.3f}  {ratio}")


# The evaluate tasks of the code issue 17 was measured against (f40de12); later ones are timed apart.
BASELINE_TASKS = ("last_layer", "ground_truth", "simulation", "interpretability")
HEADER = "  stage       wall s    CPU s    units   units/s  RSS GB  ms/unit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=300, help="synthetic probing clips (a multiple of 10)")
    ap.add_argument("--model", choices=sorted(SHAPES), default="ast")
    ap.add_argument("--baseline", type=Path, help="another code tree to time describe / evaluate against")
    ap.add_argument("--tasks", default=",".join(BASELINE_TASKS),
                    help="evaluate tasks timed in both trees (default: those of the issue's baseline); the new "
                         "tree's default tasks are then timed too, as 'evaluate*'")
    ap.add_argument("--no-quarter", action="store_true", help="skip the run at 1/4 of the layers")
    ap.add_argument("--work", type=Path, default=Path("/tmp/paper_scale"))
    ap.add_argument("--prepare-only", action="store_true", help="collect and caption, then stop")
    args = ap.parse_args()
    if args.clips % 10:
        sys.exit(f"--clips {args.clips}: expected a multiple of 10 (the synthetic set has 10 classes)")
    base = [*SHAPES[args.model], "ckpt_path=null", f"data.index.clips_per_class={args.clips // 10}"]
    tasks = [f"evaluate.tasks=[{args.tasks}]"]
    trees = {"new": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{start}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.model}-base shape, random weights, "
          f"{args.clips} synthetic clips; trees: " + ", ".join(f"{k} = {v}" for k, v in trees.items()), flush=True)

    work = {name: args.work / f"{args.model}-n{args.clips}{'' if name == 'new' else '-' + name}" for name in trees}
    runs = {"all": ["layers=all"]}
    prep = {("new", "all"): prepare(REPO, work["new"] / "all", base + runs["all"])}
    if not args.no_quarter:
        names = [spec["name"] for spec in store_of(work["new"] / "all")["layers"]][::4]
        runs["quarter"] = ["layers=[" + ",".join(names) + "]"]
    for which, layers in runs.items():
        for name, tree in trees.items():
            prep[name, which] = prepare(tree, work[name] / which, base + layers)
    if args.prepare_only:
        return
    for which, layers in runs.items():
        units = sum(int(s["units"]) for s in store_of(work["new"] / which)["layers"])
        timings = {}
        for stage, extra in (("describe", []), ("evaluate", tasks)):
            for name in reversed(list(trees)):  # baseline first, then new
                root = args.work / "runs" / f"{args.model}-n{args.clips}-{which}-{name}"
                if stage == "describe":
                    fresh_copy(work[name] / which, root)
                timings[name, stage] = run_stage(trees[name], root, stage, base + layers + extra, root / f"{stage}.log")
                print(f"    {which} {name} {stage}: {timings[name, stage]['wall']:.1f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        root = args.work / "runs" / f"{args.model}-n{args.clips}-{which}-new"
        timings["new", "evaluate*"] = run_stage(REPO, root, "evaluate", base + layers, root / "evaluate-default.log",
                                                "run-evaluate-default")
        print(f"\n[{which} layers: {len(store_of(work['new'] / which)['layers'])} layers, {units} units, "
              f"{args.clips} clips]\n{HEADER}")
        for stage, t in prep["new", which].items():
            print(line(stage, units, t, "(once, new tree)"))
        for stage in ("describe", "evaluate"):
            t = timings["new", stage]
            ratio = ""
            if "baseline" in trees:
                b = timings["baseline", stage]
                ratio = f"baseline {b['wall']:.1f} s wall, {b['cpu']:.1f} s CPU, {b['rss_gb']:.2f} GB: " \
                        f"{b['wall'] / t['wall']:.1f}x wall, {b['cpu'] / t['cpu']:.1f}x CPU"
            print(line(stage, units, t, ratio))
        print(line("evaluate*", units, timings["new", "evaluate*"], "(the default tasks, new tree)"))
        total = sum(timings["new", s]["wall"] for s in ("describe", "evaluate"))
        print(f"  describe + evaluate: {total:.1f} s wall ({total / 60:.1f} min), "
              f"{sum(timings['new', s]['cpu'] for s in ('describe', 'evaluate')):.1f} s CPU; with the default "
              f"tasks: {timings['new', 'describe']['wall'] + timings['new', 'evaluate*']['wall']:.1f} s wall")
        if "baseline" in trees:
            diff = compare(args.work / "runs" / f"{args.model}-n{args.clips}-{which}-new",
                           args.work / "runs" / f"{args.model}-n{args.clips}-{which}-baseline")
            print("  outputs vs baseline: " + ("byte-identical" if not diff else f"DIFFER: {', '.join(diff)}"))
    print(f"\nload at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
