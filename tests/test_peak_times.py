"""Peak frame times (exemplars=window, collection side): the math by hand, a planted burst found at its time through
collect_activations, the store key (unchanged without the option), resume from shards, and the windows built
from the stored peaks."""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.utils.data import DataLoader

from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.data.windows import Window
from and_lightning.describe.exemplars import exemplar_windows, needed_windows, record_windows, top_clip_curves
from and_lightning.lit.probe import ProbeModule, frame_centres, peak_times
from and_lightning.lit.writers import ActivationWriter
from and_lightning.models.base import TargetAdapter
from and_lightning.stages.collect import collect_activations
from and_lightning.store.activations import PEAK, SHARDS, ActivationStore, partial_dir, shard_files

SR = 1000
FRAME = 100  # samples: 10 frames of 0.1 s per 1 s clip
BURSTS = [3, 7, 0, 9, 5, 3]  # the frame of each clip's burst


def test_peak_times_by_hand():
    curve = torch.tensor([[[0.0, 3.0, 1.0, 0.0, 9.0],     # frame 4 starts at 1.0 s: outside a 1 s clip
                           [2.0, 2.0, 0.0, 0.0, 0.0]]])   # equal frames: the first
    assert peak_times(curve, 0.25, 1.0).tolist() == [[0.375, 0.125]]
    assert frame_centres(5, 0.3, 1.0).tolist() == pytest.approx([0.15, 0.45, 0.75, 1.0])  # last centre capped
    assert peak_times(curve, 0.3, 1.0)[0].tolist() == pytest.approx([0.45, 0.15])
    assert peak_times(torch.tensor([[[0.0, 0.0, 0.0, 5.0, 9.0]]]), 0.3, 1.0).item() == 1.0


class BurstNet(TargetAdapter):
    """Frame energies (a Conv1d of 0.1 s frames on the squared waveform): unit 0 peaks at the loudest frame, unit 1
    (the negated energy) at the first of the quietest; the head has no time axis."""

    def __init__(self):
        super().__init__()
        self.sample_rate = SR
        self.frames = nn.Conv1d(1, 2, kernel_size=FRAME, stride=FRAME, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.frames.weight.copy_(torch.stack([torch.ones(1, FRAME), -torch.ones(1, FRAME)]))
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, wave):
        return self.fc(self.frames(wave[:, None] ** 2).mean(dim=2))

    def layer_paths(self):
        return {"frames": "frames", "head": "fc"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[ClipRecord]:
    folder = tmp_path_factory.mktemp("bursts")
    records = []
    for i, frame in enumerate(BURSTS):
        wave = np.full(SR, 0.01, np.float32)
        wave[frame * FRAME:(frame + 1) * FRAME] = 0.5 + 0.1 * i
        sf.write(folder / f"c{i}.wav", wave, SR, subtype="FLOAT")
        records.append(ClipRecord(f"c{i}", str(folder / f"c{i}.wav"), 0, 1))
    return records


def collect(records, root, adapter=None, **kw):
    return collect_activations(adapter or BurstNet(), records, None, 1.0, ["frames", "head"], "mean", root,
                               batch_size=4, progress=False, top_k=2, **kw)


def test_planted_bursts_peak_at_their_frames_and_windows_surround_them(clips, tmp_path):
    store = ActivationStore.open(collect(clips, tmp_path, peak_times=True))
    peaks = np.asarray(store.peak("frames"))
    assert peaks[:, 0].tolist() == pytest.approx([(f + 0.5) * 0.1 for f in BURSTS])
    assert peaks[:, 1].tolist() == pytest.approx([0.15 if f == 0 else 0.05 for f in BURSTS])
    assert np.isnan(store.peak("head")).all()
    # unit 0's top-2: the loudest bursts (c5 at frame 3, c4 at frame 5); 0.4 s windows around them
    top = store.topk("frames")
    assert exemplar_windows(store, "frames", top.top_rows, 0.4)[0] == [Window("c5", 0.15, 0.55),
                                                                      Window("c4", 0.35, 0.75)]
    # the head has no time axis: whole clips; every window is listed once
    assert all(w == Window(w.clip_id, 0.0, 1.0) for w in exemplar_windows(store, "head", top.top_rows, 0.4)[0])
    ids = [w.id for w in needed_windows(store, 2, 0.4)]
    assert "c5@0.150-0.550" in ids and len(ids) == len(set(ids))


def test_the_option_enters_the_store_key_only_when_set_and_resumes_from_shards(clips, tmp_path):
    plain = collect(clips, tmp_path / "a")
    timed = collect(clips, tmp_path / "a", peak_times=True)
    assert plain != timed and not (plain / "layer=frames" / PEAK).exists()
    assert "peak_times" not in ActivationStore.open(plain).manifest["preprocessing"]
    with pytest.raises(FileNotFoundError, match="exemplars=window"):
        ActivationStore.open(plain).peak("frames")
    # a crashed run: its shards (with peaks) committed, the store never assembled; the rerun does no forward pass
    store = tmp_path / "b" / timed.name
    probe = ProbeModule(BurstNet(), ["frames", "head"], "mean", record_peaks=True)
    writer = ActivationWriter(partial_dir(store) / SHARDS, {r.clip_id: i for i, r in enumerate(clips)},
                              probe.widths, 4, peaks=True)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
        probe, DataLoader(ClipDataset(clips, SR, 1.0), batch_size=4), return_predictions=False)
    assert len(shard_files(partial_dir(store) / SHARDS)) == 2
    again, calls = BurstNet(), []
    again.register_forward_hook(lambda *args: calls.append(1))
    assert collect(clips, tmp_path / "b", again, peak_times=True) == store and not calls
    resumed, clean = ActivationStore.open(store), ActivationStore.open(timed)
    np.testing.assert_array_equal(resumed.peak("frames"), clean.peak("frames"))


def test_the_report_gets_each_top_clips_window_and_curve(clips, tmp_path):
    store = ActivationStore.open(collect(clips, tmp_path, peak_times=True))
    top = store.topk("frames")
    windows = exemplar_windows(store, "frames", top.top_rows, 0.4)[0]
    records = [{"layer": "frames", "unit": 0, "top_clips": top.top_ids[0].tolist(),
                "top_windows": [[w.start, w.end] for w in windows]},
               {"layer": "head", "unit": 0, "top_clips": ["c0"], "top_windows": [[0.0, 1.0]]}]
    assert record_windows(records) == {("frames", 0): windows, ("head", 0): [Window("c0", 0.0, 1.0)]}
    curves = top_clip_curves(BurstNet(), records, {r.clip_id: r for r in clips}, 1.0)
    assert list(curves) == [("frames", 0)]  # the head has no time axis
    (times, values), (_, second) = curves["frames", 0]  # c5 (burst 1.0 in frame 3), c4 (0.9 in frame 5)
    assert times.tolist() == pytest.approx([0.05 + 0.1 * i for i in range(10)])
    expected = np.full(10, FRAME * 0.01**2)
    expected[3] = FRAME * 1.0**2
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    assert int(np.argmax(second)) == 5
