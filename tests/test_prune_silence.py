"""A pruned unit is exactly 0 where the next layer reads it, on every clip, and no other unit of its layer moves:
a CNN trained by `train(cfg)` (learned BatchNorm statistics), the pretrained CREPE, and tiny AST / BEATs; with the
masks as hooks and baked into the weights (what `bake_and_verify` checks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from and_lightning.checkpoints import build, load_adapter
from and_lightning.data.clips import ClipDataset
from and_lightning.dissection import dissect
from and_lightning.prune.masks import UnitMasks
from and_lightning.prune.unlearn import bake_and_verify
from and_lightning.store.activations import ActivationStore
from conftest import CONF, compose_cfg


def reader_inputs(adapter, readers: dict[str, tuple[str, int]], audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each layer, the input of the module that reads its units (module path, call index) as
    [N, units, positions]: units at dim 1 of conv inputs [N, C, H, W], last of token inputs [B, T, units]."""
    calls: dict[str, list[torch.Tensor]] = {}
    handles = []
    for path in {p for p, _ in readers.values()}:
        module = adapter.get_submodule(path)
        handles.append(module.register_forward_pre_hook(
            lambda m, args, path=path: calls.setdefault(path, []).append(args[0].detach().clone())))
    try:
        with torch.no_grad():
            adapter(audio)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for layer, (path, call) in readers.items():
        x = calls[path][call]
        out[layer] = x.reshape(x.shape[0], x.shape[1], -1) if x.dim() == 4 else x.movedim(-1, 1)
    return out


def assert_silenced(adapter, readers, audio, units: dict[str, list[int]]) -> None:
    """Prune `units` of one layer at a time; at its reader the pruned units are exactly 0 everywhere and the
    others are bit-identical to the unpruned model's."""
    clean = reader_inputs(adapter, readers, audio)
    for layer, idx in units.items():
        keep = [i for i in range(clean[layer].shape[1]) if i not in idx]
        assert torch.count_nonzero(clean[layer][:, idx]) > 0, f"{layer}: the pruned units carried no signal"
        with UnitMasks(adapter, {layer: idx}):
            pruned = reader_inputs(adapter, readers, audio)[layer]
        assert torch.count_nonzero(pruned[:, idx]) == 0, f"{layer}: pruned units still reach the next layer"
        assert torch.equal(pruned[:, keep], clean[layer][:, keep]), f"{layer}: other units changed"


@pytest.fixture(scope="module")
def trained(trained_cnn):
    """The trained CNN (eval mode) and every clip of its probing set."""
    ckpt, root, overrides = trained_cnn
    cfg = compose_cfg("train", root, overrides)
    adapter, _ = load_adapter(ckpt, cfg.model)
    data = build(cfg.data)
    data.prepare_data()
    clips = ClipDataset(data.index.records, data.sample_rate, data.clip_seconds)
    return adapter.eval(), torch.stack([clips[i]["audio"] for i in range(len(clips))]), (ckpt, cfg.model)


CNN_READERS = {f"conv{i}": (f"net.conv{i}.pool", 0) for i in (1, 2)}  # the max-pool reads the block's channels


def bn_of_zero(adapter, layer: str) -> torch.Tensor:
    bn = adapter.get_submodule(f"net.{layer}.bn")
    return bn.bias - bn.weight * bn.running_mean / (bn.running_var + bn.eps).sqrt()


def test_trained_cnn_pruned_channels_are_zero_where_the_next_layer_reads_them(trained):
    adapter, audio, _ = trained
    leaky = {layer: (bn_of_zero(adapter, layer) > 0).nonzero().flatten().tolist() for layer in CNN_READERS}
    assert leaky["conv2"], "the fixture's BatchNorm should map a zeroed conv output above 0 for some channel"
    # every channel whose raw-conv zeroing would leak, plus channel 0 of each layer
    units = {layer: sorted(set(idx) | {0}) for layer, idx in leaky.items()}
    assert_silenced(adapter, CNN_READERS, audio, units)


@pytest.mark.parametrize("faithful", [False, True])
def test_dissection_records_the_unit_pruning_silences_and_faithful_its_pre_activation(trained_cnn, trained, faithful):
    """`python dissect.py` stores each conv unit as the max-pool reads it (after BatchNorm and ReLU);
    describe.faithful=true stores the BatchNorm output before the ReLU (the original's pre-activation hooks)."""
    ckpt, root, overrides = trained_cnn
    adapter, audio, _ = trained
    cfg = compose_cfg("dissect", root, [*overrides, f"ckpt_path={ckpt}", "stage=collect", "layers=[conv1,conv2]",
                                        "logger=none", f"describe.faithful={str(faithful).lower()}"])
    store = ActivationStore.open(dissect(cfg)["store"])
    assert store.manifest["preprocessing"]["pre_activation"] is faithful
    read = reader_inputs(adapter, CNN_READERS, audio)
    for layer in CNN_READERS:
        want = (read[layer] if not faithful else bn_output(adapter, layer, audio)).mean(dim=2)
        np.testing.assert_allclose(np.asarray(store.acts(layer), dtype=np.float32), want.numpy(), atol=2e-3, rtol=2e-3)
    if faithful:  # the pre-activation values differ: negative where the ReLU cuts
        assert (np.asarray(store.acts("conv2")) < 0).any()


def bn_output(adapter, layer: str, audio: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = adapter.get_submodule(f"net.{layer}.bn").register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        adapter(audio)
    handle.remove()
    return seen[0].reshape(seen[0].shape[0], seen[0].shape[1], -1)


def test_trained_cnn_baked_masks_silence_in_eval_and_train_mode(trained):
    _, audio, ckpt = trained
    adapter = load_adapter(*ckpt)[0].eval()  # baking changes the weights: a copy of its own
    units = {"conv1": [1], "conv2": (bn_of_zero(adapter, "conv2") > 0).nonzero().flatten().tolist()}
    before = {layer: reader_inputs(adapter, CNN_READERS, audio)[layer] for layer in CNN_READERS}
    masks = UnitMasks(adapter, units).apply()
    try:
        checked = bake_and_verify(adapter, masks, audio[:16])
    finally:
        masks.remove()
    assert checked["prune/baked_max_abs_pruned_output"] == 0.0
    after = reader_inputs(adapter, CNN_READERS, audio)
    assert torch.count_nonzero(after["conv1"][:, [1]]) == 0 and torch.count_nonzero(after["conv2"][:, units["conv2"]]) == 0
    assert torch.equal(after["conv1"][:, [0, 2, 3]], before["conv1"][:, [0, 2, 3]])
    trained_mode = reader_inputs(adapter.train(), CNN_READERS, audio[:16])  # batch statistics: still 0
    assert torch.count_nonzero(trained_mode["conv2"][:, units["conv2"]]) == 0


def tiny_from_yaml(name: str) -> torch.nn.Module:
    node = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    node.pop("name")
    if "num_classes" in node:
        node["num_classes"] = 4
    torch.manual_seed(0)
    return build(node).eval()


def waves(n: int = 3, seconds: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(16000 * seconds)) / 16000
    tones = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (220.0, 880.0, 3000.0)][:n])
    return 0.3 * tones + 0.05 * torch.randn(n, t.numel(), generator=g)


AST = "net.audio_spectrogram_transformer.layers.{i}"
TRANSFORMERS = {
    # AST: fc2 reads the MLP's hidden units; the block's dropout is called on the attention output, then on fc2's
    "ast_tiny": {**{f"block{i}.fc1": (AST.format(i=i) + ".mlp.fc2", 0) for i in range(2)},
                 **{f"block{i}.attn_out": (AST.format(i=i) + ".dropout", 0) for i in range(2)},
                 **{f"block{i}.fc2": (AST.format(i=i) + ".dropout", 1) for i in range(2)}},
    "beats_tiny": {**{f"block{i}.fc1": (f"beats.encoder.layers.{i}.fc2", 0) for i in range(2)},
                   **{f"block{i}.fc2": (f"beats.encoder.layers.{i}.dropout3", 0) for i in range(2)}},
}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_units_are_zero_where_the_next_layer_reads_them(name):
    adapter = tiny_from_yaml(name)
    readers = TRANSFORMERS[name]
    widths = adapter.layers()
    assert set(readers) == set(widths) - {"head"}
    assert_silenced(adapter, readers, waves(), {layer: list(range(0, widths[layer], 3)) for layer in readers})


def test_crepe_pruned_channels_are_zero_where_the_next_conv_reads_them():
    """CREPE runs conv -> ReLU -> BatchNorm -> pool: its pretrained BatchNorm would turn a zeroed conv output
    into a constant; pruning the BatchNorm output leaves the next conv (and the classifier) nothing."""
    adapter = tiny_from_yaml("crepe")
    readers = {f"conv{i}": (f"net.conv{i + 1}", 0) for i in range(1, 6)}
    audio = waves(2, 0.1)
    assert_silenced(adapter, readers, audio, {layer: [0, 3, 5] for layer in readers})
    # conv6 feeds the classifier as [frames, height * channels] (channel fastest)
    with UnitMasks(adapter, {"conv6": [2]}):
        seen = []
        handle = adapter.net.classifier.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            adapter(audio)
        handle.remove()
    flat = seen[0].reshape(seen[0].shape[0], -1, adapter.layers()["conv6"])
    assert torch.count_nonzero(flat[:, :, 2]) == 0 and torch.count_nonzero(flat[:, :, 1]) > 0
