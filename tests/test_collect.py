"""Stage 1 (collect): ProbeModule + ActivationWriter + store, checked against hooks run by hand on the same audio.

Models: FakeTinyAdapter (a fake for speed: one Conv1d, one Linear on tokens, a head), the real SmallCNN, and
the ast_tiny config (random tiny ASTAdapter). Also: reuse without forward passes, store keys, errors raised
before anything is written, resume after SIGKILL, and a ddp_spawn run identical to a single-process one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import hydra
import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.lit.probe import REDUCTIONS, ProbeModule
from and_lightning.lit.writers import ActivationWriter
from and_lightning.models.base import TargetAdapter, UnknownLayerError
from and_lightning.models.cnn import SmallCNN
from and_lightning.stages.collect import collect_activations
from and_lightning.store.activations import SHARDS, ActivationStore, partial_dir, shard_files

REPO = Path(__file__).resolve().parents[1]
SR = 16000
N_CLIPS = 24
FAKE_LAYERS = ["conv", "tokens", "head"]


class FakeTinyAdapter(TargetAdapter):
    """Fake target for speed: waveform -> Conv1d (units at dim 1) -> Linear on tokens -> mean -> head.

    Counts the clips it has seen (`rows_seen`), can sleep per forward (`delay`) so a test can kill it, and can
    append "<pid> <clips>" per forward to `trace` (a file) to show which processes did the work.
    """

    def __init__(self, num_classes: int = 3, delay: float = 0.0, trace: str | None = None):
        super().__init__()
        self.sample_rate = SR
        self.conv = nn.Conv1d(1, 6, kernel_size=400, stride=160)
        self.tokens = nn.Linear(6, 5)
        self.fc = nn.Linear(5, num_classes)
        self.head_path = "fc"
        self._delay = delay
        self._trace = trace
        self._rows_seen = 0

    @property
    def rows_seen(self) -> int:
        return self._rows_seen

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        return wave.unsqueeze(1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        self._rows_seen += wave.shape[0]
        if self._delay:
            time.sleep(self._delay)
        if self._trace:
            with open(self._trace, "a") as f:
                f.write(f"{os.getpid()} {wave.shape[0]}\n")
        tokens = self.tokens(self.conv(self.preprocess(wave)).transpose(1, 2))  # [B, L, 5]
        return self.fc(torch.tanh(tokens).mean(dim=1))

    def layer_paths(self) -> dict[str, str]:
        return {"conv": "conv", "tokens": "tokens", "head": "fc"}


def make_fake(seed: int = 0, delay: float = 0.0, trace: str | None = None) -> FakeTinyAdapter:
    torch.manual_seed(seed)
    return FakeTinyAdapter(delay=delay, trace=trace).eval()


def make_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=3).eval()


def make_ast_tiny(seed: int = 0) -> TargetAdapter:
    cfg = OmegaConf.load(REPO / "conf" / "model" / "ast_tiny.yaml")
    cfg.num_classes = 3
    del cfg["name"]
    torch.manual_seed(seed)
    return hydra.utils.instantiate(cfg).eval()


MODELS = {"fake": (make_fake, FAKE_LAYERS), "cnn": (make_cnn, ["conv1", "conv3", "head"]),
          "ast_tiny": (make_ast_tiny, ["block0.attn_out", "block1.fc1", "block1.fc2", "head"])}


def write_clips(folder: Path, n: int, seed: int = 0) -> list[ClipRecord]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"clip{i:03d}.wav"
        wave = rng.standard_normal(SR) * rng.uniform(0.01, 0.5) * np.sin(np.linspace(0, rng.uniform(1, 40), SR))
        sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
        records.append(ClipRecord(f"clip{i:03d}", str(path), i % 3, 1 + i % 2))
    return records


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[ClipRecord]:
    return write_clips(tmp_path_factory.mktemp("clips"), N_CLIPS)


def collect(adapter, records, root, layers=FAKE_LAYERS, reduction="mean", **kw):
    kw = {"batch_size": 8, "progress": False, **kw}
    return collect_activations(adapter, records, None, 1.0, layers, reduction, root, **kw)


def direct_acts(adapter: TargetAdapter, layers: list[str], records,
                *reductions: tuple[str, bool]) -> list[dict[str, np.ndarray]]:
    """Reference: plain forward hooks on the adapter's modules, one forward over all clips, reduced by hand once per
    (reduction, through the layer's activation?) pair: with it, as the next layer reads them (see test_models);
    without it, the module output itself."""
    waves = torch.stack([torch.from_numpy(sf.read(r.path, dtype="float32")[0]) for r in records])
    outputs, handles = {}, []
    for name in layers:
        module = adapter.get_submodule(adapter.layer_paths()[name])
        handles.append(module.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out)))
    with torch.inference_mode():
        adapter(waves)
    for h in handles:
        h.remove()
    return [{name: reduce_by_hand(adapter, name, out, reduction, activation) for name, out in outputs.items()}
            for reduction, activation in reductions]


def reduce_by_hand(adapter: TargetAdapter, name: str, out: torch.Tensor, reduction: str,
                   activation: bool) -> np.ndarray:
    if activation:
        out = adapter.unit_activations().get(name, lambda x: x)(out)
    if isinstance(adapter.get_submodule(adapter.layer_paths()[name]), nn.Linear):
        x, pos = out.reshape(out.shape[0], -1, out.shape[-1]), 1  # [B, positions, units]
    else:
        x, pos = out.reshape(out.shape[0], out.shape[1], -1), 2  # [B, units, positions]
    if reduction == "mean":
        y = x.mean(dim=pos)
    elif reduction == "max":
        y = x.max(dim=pos).values
    else:  # cls / token0: the first position (AST's CLS token)
        y = x.select(pos, 0)
    return y.float().numpy()


def store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("model", list(MODELS))
def test_collection_equals_direct_hooks(model, reduction, clips, tmp_path):
    make, layers = MODELS[model]
    adapter = make()
    path = collect(adapter, clips, tmp_path, layers=layers, reduction=reduction, batch_size=5, top_k=4)
    store = ActivationStore.open(path)
    # the tie-break statistic: the same reduction before the layer's activation, or else the other pooling
    with_activation = set(adapter.unit_activations())
    other = "max" if reduction == "mean" else "mean"
    expected, before, pooled, mean = direct_acts(make(), layers, clips, (reduction, True), (reduction, False),
                                                 (other, True), ("mean", True))
    expected_tie = {n: before[n] if n in with_activation else pooled[n] for n in layers}
    assert store.clip_ids == [r.clip_id for r in clips]
    assert list(store.layers) == layers and store.manifest["reduction"] == reduction
    assert store.tie_break == {n: f"{reduction} of the unit's output before its activation" if n in with_activation
                               else f"{other} over positions of the unit's output" for n in layers}
    for layer in layers:
        acts, tie = np.asarray(store.acts(layer)), np.asarray(store.tiebreak(layer))
        assert acts.dtype == np.float32 and acts.shape == (N_CLIPS, store.layers[layer]) == expected[layer].shape
        np.testing.assert_allclose(acts, expected[layer], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tie, expected_tie[layer], rtol=1e-5, atol=1e-6)
        tk = store.topk(layer)
        order = np.stack([np.lexsort((-tie[:, u], -acts[:, u]))[:4] for u in range(acts.shape[1])])
        assert np.array_equal(tk.top_rows, order)
        assert np.array_equal(tk.bottom_rows, np.stack([np.lexsort((tie[:, u], acts[:, u]))[:4]
                                                        for u in range(acts.shape[1])]))
        assert tk.top_ids.tolist() == np.asarray(store.clip_ids)[order].tolist()
        np.testing.assert_allclose(tk.mean, acts.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tk.std, acts.astype(np.float64).std(0), rtol=1e-5, atol=1e-6)
    if reduction in ("cls", "token0") and model == "ast_tiny":
        assert not np.allclose(expected["block1.fc2"], mean["block1.fc2"])  # position 0 really differs from pooling


def test_reuse_runs_no_forward_pass_and_keys_follow_the_content(clips, tmp_path):
    adapter = make_fake()
    first = collect(adapter, clips, tmp_path)
    assert adapter.rows_seen == N_CLIPS
    before = store_bytes(first)
    assert collect(adapter, clips, tmp_path) == first
    assert collect(adapter, clips, tmp_path, layers=FAKE_LAYERS[::-1]) == first  # same set, model order
    assert adapter.rows_seen == N_CLIPS  # zero forward passes on reuse
    assert store_bytes(first) == before

    assert collect(adapter, clips, tmp_path, top_k=8) == first  # another K: from the stored matrix
    assert adapter.rows_seen == N_CLIPS
    store = ActivationStore.open(first)
    assert store.topk("conv", k=8).top_rows.shape == (6, 8) and store.topk("conv").top_rows.shape == (6, 5)

    others = {
        collect(adapter, clips, tmp_path, reduction="max"),
        collect(adapter, clips, tmp_path, layers=["conv", "head"]),
        collect(make_fake(seed=1), clips, tmp_path),  # other weights
        collect(adapter, clips[:-1], tmp_path),  # other dataset
        collect(adapter, clips[::-1], tmp_path),  # same clips, other order (rows differ)
    }
    assert first not in others and len(others) == 5
    stores = sorted(p.name for p in tmp_path.iterdir() if p.name != ".locks")
    assert stores == sorted([first.name] + [p.name for p in others])


class DCAdapter(TargetAdapter):
    """Fake for speed with planted units: a clip's 10 frame means x_t feed Linear(1, 2) then a ReLU, so
    unit 0 = mean_t relu(2000 + 100 x_t) (2000.0 .. 2000.3: one float16 value) and unit 1 = mean_t relu(x_t),
    exactly 0 on every clip whose frames are all <= 0 (its tie-break statistic: mean_t x_t)."""

    def __init__(self):
        super().__init__()
        self.sample_rate = SR
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[100.0], [1.0]]))
            self.fc.bias.copy_(torch.tensor([2000.0, 0.0]))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.fc(wave.reshape(wave.shape[0], 10, -1).mean(dim=2, keepdim=True)).mean(dim=1)

    def layer_paths(self) -> dict[str, str]:
        return {"fc": "fc"}

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {"fc": torch.relu}


def test_top_k_is_exact_in_float32_and_ties_go_by_the_tie_break_statistic(tmp_path):
    """Through collect_activations: unit 0's top-3 are its 3 largest values though float16 would tie 4 of them;
    unit 1's bottom-3 (4 clips at exactly 0) are the clips that stayed furthest below zero before the ReLU (not
    the first clips), and the tie is counted."""
    levels = [[-0.1] * 10, [-0.4] * 10, [0.0] * 10, [-0.3] * 5 + [-0.2] * 5, [0.2] * 10,
              [0.001] * 10, [0.002] * 10, [0.003] * 10]
    records = []
    for i, frames in enumerate(levels):
        sf.write(tmp_path / f"dc{i}.wav", np.repeat(np.float32(frames), SR // 10), SR, subtype="FLOAT")
        records.append(ClipRecord(f"dc{i}", str(tmp_path / f"dc{i}.wav"), 0, 1))
    store = ActivationStore.open(collect(DCAdapter().eval(), records, tmp_path / "store", layers=["fc"], top_k=3))
    tk = store.topk("fc")
    assert tk.top_ids[0].tolist() == ["dc4", "dc7", "dc6"]  # 2020, 2000.3, 2000.2 (float16: 2020, 2000, 2000)
    assert tk.top_values[0, 1] == pytest.approx(2000.3, abs=1e-3) and tk.top_ties[0] == 0
    assert tk.bottom_ids[1].tolist() == ["dc1", "dc3", "dc0"]  # all 0; before the ReLU -0.4, -0.25, -0.1 (dc2: 0)
    assert tk.bottom_values[1].tolist() == [0.0, 0.0, 0.0]
    assert tk.bottom_tiebreak[1].tolist() == pytest.approx([-0.4, -0.25, -0.1])
    assert (tk.bottom_ties[1], tk.bottom_unresolved[1]) == (1, 0)  # dc2 left out, decided by the statistic
    assert store.tie_break == {"fc": "mean of the unit's output before its activation"}


def test_a_store_of_the_previous_format_is_never_reused(clips, tmp_path):
    """A float16 store of format 1 found under a store key (restored from an old cache) is refused in one line,
    naming it, instead of being read as if it held float32 values and tie-broken top-K."""
    path = collect(make_fake(), clips, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    adapter = make_fake()
    with pytest.raises(ValueError, match=rf"^{path / 'manifest.json'}: activation store format 1, this code reads "
                                         rf"format 2 .*; delete {path} and collect again$"):
        collect(adapter, clips, tmp_path)
    assert adapter.rows_seen == 0


def test_changed_audio_bytes_give_a_new_store(clips, tmp_path):
    records = write_clips(tmp_path / "wav", 4)
    first = collect(make_fake(), records, tmp_path / "s")
    sf.write(records[2].path, np.zeros(SR, np.float32), SR, subtype="FLOAT")
    assert collect(make_fake(), records, tmp_path / "s") != first


def test_errors_are_raised_before_anything_is_written(clips, tmp_path):
    root = tmp_path / "store"
    adapter = make_fake()
    with pytest.raises(UnknownLayerError, match="unknown layer 'conv9'.*available: conv, tokens, head"):
        collect(adapter, clips, root, layers=["conv", "conv9"])
    with pytest.raises(ValueError, match="no clips"):
        collect(adapter, [], root)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*missing.ckpt"):
        collect(adapter, clips, root, checkpoint=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        collect_activations(adapter, clips, 22050, 1.0, FAKE_LAYERS, "mean", root)
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        collect(adapter, clips, root, reduction="median")
    gone = ClipRecord("gone", str(tmp_path / "gone.wav"), 0, 1)
    with pytest.raises(FileNotFoundError, match="clip 'gone': audio file not found"):
        collect(adapter, [*clips, gone], root)
    assert not root.exists()
    assert adapter.rows_seen == 0


def test_checkpoint_is_loaded_from_a_lightning_style_file(clips, tmp_path):
    trained = make_fake(seed=7)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    from_ckpt = collect(make_fake(seed=0), clips, tmp_path / "a", checkpoint=ckpt)
    direct = collect(trained, clips, tmp_path / "b")
    assert from_ckpt.name == direct.name and store_bytes(from_ckpt) == store_bytes(direct)
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(ValueError, match="does not fit FakeTinyAdapter: missing .*unexpected \\['other.weight'\\]"):
        collect(make_fake(), clips, tmp_path / "c", checkpoint=ckpt)


def test_probe_removes_its_hooks(clips):
    adapter = make_fake()
    probe = ProbeModule(adapter, ["conv", "tokens"], "max")
    loader = DataLoader(ClipDataset(clips[:4], SR, 1.0), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(probe, loader)
    assert [b["clip_id"] for b in out] == [["clip000", "clip001"], ["clip002", "clip003"]]
    assert out[0]["acts"]["conv"].dtype == torch.float32 and out[0]["acts"]["tokens"].shape == (2, 5)
    assert out[0]["tiebreak"]["tokens"].shape == (2, 5)
    assert not adapter.conv._forward_hooks and not adapter.tokens._forward_hooks


def test_writer_shards_and_refuses_nan(tmp_path):
    """The writer on its own: shards every `shard_rows` rows, float32 kept exactly, NaN / inf refused (naming the
    layer)."""
    widths = {"a": 2, "b": 3}
    writer = ActivationWriter(tmp_path, {f"c{i}": i for i in range(10)}, widths, shard_rows=4)

    def batch(ids, a, b):
        a, b = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
        return {"clip_id": ids, "acts": {"a": a, "b": b}, "tiebreak": {"a": a - 1, "b": b - 1}}

    writer.write_on_batch_end(None, None, batch(["c0", "c1", "c2"], [[1, 2]] * 3, [[0, 0, 0]] * 3), None, None, 0)
    assert writer.shards_written == 0
    writer.write_on_batch_end(None, None, batch(["c3", "c4"], [[1, 2]] * 2, [[1e6 + 0.5, 0, 0]] * 2), None, None, 1)
    assert writer.shards_written == 1  # 3 + 2 rows do not fit in 4: the first 3 became a shard
    with pytest.raises(ValueError, match=r"layer\(s\) \['a'\] produced NaN or infinite acts for clips \['c5'\]"):
        writer.write_on_batch_end(None, None, batch(["c5"], [[float("nan"), 0]], [[0, 0, 0]]), None, None, 2)
    with pytest.raises(ValueError, match=r"layer\(s\) \['b'\] produced NaN or infinite acts"):
        writer.write_on_batch_end(None, None, batch(["c5"], [[0, 0]], [[float("inf"), 0, 0]]), None, None, 2)
    with pytest.raises(KeyError, match="'zz' is not in the collection's clip list"):
        writer.write_on_batch_end(None, None, batch(["zz"], [[0, 0]], [[0, 0, 0]]), None, None, 3)
    with pytest.raises(ValueError, match=r"layer 'a': got acts of shape \(1, 3\), expected \(1, 2\)"):
        writer.write_on_batch_end(None, None, batch(["c6"], [[0, 0, 0]], [[0, 0, 0]]), None, None, 4)
    writer.on_predict_end(None, None)
    shards = shard_files(tmp_path)
    assert writer.shards_written == 2 and len(shards) == 2
    with np.load(shards[1]) as z:  # the shard that starts at row 3
        assert z["rows"].tolist() == [3, 4] and z["layers"].tolist() == ["a", "b"]
        assert z["acts"][:, 2].tolist() == [1e6 + 0.5] * 2 and z["tiebreak"][:, 2].tolist() == [1e6 - 0.5] * 2


def test_resume_when_every_shard_is_done_assembles_without_forward(clips, tmp_path):
    """Shards written by the writer through a real predict loop, store never assembled (as after a crash)."""
    clean = collect(make_fake(), clips, tmp_path / "clean", shard_rows=8)
    store = tmp_path / "crashed" / clean.name
    shard_dir = partial_dir(store) / SHARDS
    adapter = make_fake()
    probe = ProbeModule(adapter, FAKE_LAYERS, "mean")
    writer = ActivationWriter(shard_dir, {r.clip_id: i for i, r in enumerate(clips)}, probe.widths, 8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(probe, DataLoader(ClipDataset(clips, SR, 1.0), batch_size=8), return_predictions=False)
    assert writer.shards_written == 3 and len(shard_files(shard_dir)) == 3
    again = make_fake()
    assert collect(again, clips, tmp_path / "crashed", shard_rows=8) == store
    assert again.rows_seen == 0
    assert store_bytes(store) == store_bytes(clean) and not partial_dir(store).exists()


def test_concurrent_collections_of_one_store_compute_it_once(clips, tmp_path):
    """A second job asking for the same store while the first computes it waits, then reuses it."""
    import threading

    root = tmp_path / "store"
    first, second = make_fake(delay=0.1), make_fake()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("a", collect(first, clips, root, batch_size=4,
                                                                          shard_rows=4)))
    worker.start()
    deadline = time.monotonic() + 30
    while not list(root.glob(f"*.partial/{SHARDS}/rows-*.npz")):  # the first job is collecting
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    path = collect(second, clips, root, batch_size=4, shard_rows=4)
    worker.join()
    assert path == result["a"] and first.rows_seen == N_CLIPS and second.rows_seen == 0


RUN_KILLABLE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_collect import make_fake, collect
from and_lightning.data.clips import ClipRecord
records = [ClipRecord(**r) for r in json.load(open(sys.argv[2]))]
collect(make_fake(delay=0.3), records, sys.argv[3], batch_size=4, shard_rows=8)
"""


@pytest.mark.slow
def test_sigkill_mid_collection_then_rerun_recomputes_only_unfinished_shards(clips, tmp_path):
    listing = tmp_path / "records.json"
    listing.write_text(json.dumps([{"clip_id": r.clip_id, "path": r.path, "label": r.label, "fold": r.fold}
                                   for r in clips]))
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", RUN_KILLABLE, str(Path(__file__).parent), str(listing), str(root)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(root.glob(f"*.partial/{SHARDS}/rows-*.npz")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard appeared within 60 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (partial,) = root.glob("*.partial")
    done = [np.load(p)["rows"] for p in shard_files(partial / SHARDS)]  # every committed shard is readable
    finished = sum(len(rows) for rows in done)
    assert 8 <= finished < N_CLIPS and finished % 8 == 0
    assert [p.name for p in root.iterdir() if p.name != ".locks"] == [partial.name]  # no store, not even half

    adapter = make_fake()
    path = collect(adapter, clips, root, batch_size=4, shard_rows=8)
    assert adapter.rows_seen == N_CLIPS - finished  # finished shards were not recomputed
    clean = collect(make_fake(), clips, tmp_path / "clean", batch_size=4, shard_rows=8)
    assert path.name == clean.name and store_bytes(path) == store_bytes(clean)
    assert sorted(p.name for p in root.iterdir() if p.name != ".locks") == [path.name]


@pytest.mark.slow
def test_ddp_spawn_store_is_byte_identical_to_single_process(clips, tmp_path):
    records = clips[:16]  # 16 clips, batch 4: every batch has 4 clips in both runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ddp_spawn workers on 2 CPUs get one thread each
    try:
        single = collect(make_fake(), records, tmp_path / "single", batch_size=4, shard_rows=4)
    finally:
        torch.set_num_threads(threads)
    trace = tmp_path / "trace.txt"
    ddp = collect(make_fake(trace=str(trace)), records, tmp_path / "ddp", batch_size=4, shard_rows=4,
                  trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})
    per_pid: dict[str, int] = {}
    for line in trace.read_text().split("\n")[:-1]:
        pid, rows = line.split()
        per_pid[pid] = per_pid.get(pid, 0) + int(rows)
    assert sorted(per_pid.values()) == [8, 8] and str(os.getpid()) not in per_pid  # two worker ranks, 8 clips each
    assert ddp.name == single.name
    assert store_bytes(ddp) == store_bytes(single)
    assert not partial_dir(ddp).exists()
