"""Target adapters: layer maps, widths, unit views, forward shapes, AST features, CREPE pitch, layer specs."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchcrepe
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import ASTFeatureExtractor

from and_lightning.data.audio_io import resample
from and_lightning.lit.probe import ProbeModule
from and_lightning.models.ast import AUDIOSET_MEAN, AUDIOSET_STD, ASTAdapter
from and_lightning.models.base import UnknownLayerError
from and_lightning.models.cnn import SmallCNN
from and_lightning.models.crepe import CrepeAdapter, bin_frequencies
from and_lightning.models.registry import resolve_layers
from test_prune_silence import TRANSFORMERS, reader_inputs

REPO = Path(__file__).resolve().parents[1]
MODEL_CONF = REPO / "conf" / "model"
SR = 16000
B = 2
NUM_CLASSES = 5


def build_from_yaml(name: str, num_classes: int = NUM_CLASSES):
    """Instantiate conf/model/<name>.yaml the way the project does (descriptive `name` key dropped)."""
    cfg = OmegaConf.merge({"data": {"num_classes": num_classes}}, {"model": OmegaConf.load(MODEL_CONF / f"{name}.yaml")})
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert node.pop("name") == name
    return instantiate(node, _convert_="all")


def sine(freq: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return amp * torch.sin(2 * math.pi * freq * t)


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.stack([sine(440.0) + 0.01 * torch.randn(SR, generator=g), 0.2 * torch.randn(SR, generator=g)])


@pytest.fixture(scope="module")
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return build_from_yaml("cnn").eval()


@pytest.fixture(scope="module")
def ast_tiny() -> ASTAdapter:
    torch.manual_seed(0)
    return build_from_yaml("ast_tiny").eval()


@pytest.fixture(scope="module")
def crepe() -> CrepeAdapter:
    return build_from_yaml("crepe").eval()


@pytest.fixture(scope="module")
def adapters(cnn, ast_tiny, crepe):
    return {"cnn": cnn, "ast_tiny": ast_tiny, "crepe": crepe}


def hooked_outputs(adapter, wave: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `adapter` with a forward hook on every logical layer (resolved by get_submodule)."""
    outs, handles = {}, []
    for name, path in adapter.layer_paths().items():
        module = adapter.get_submodule(path)
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o.detach())))
    try:
        with torch.no_grad():
            logits = adapter(wave)
    finally:
        for h in handles:
            h.remove()
    return logits, outs


EXPECTED_WIDTHS = {
    "cnn": {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "head": NUM_CLASSES},
    "ast_tiny": {
        **{f"block{i}.{k}": w for i in range(2) for k, w in (("attn_out", 64), ("fc1", 128), ("fc2", 64))},
        "head": NUM_CLASSES,
    },
    "crepe": {"conv1": 128, "conv2": 16, "conv3": 16, "conv4": 16, "conv5": 32, "conv6": 64, "classifier": 360},
}


@pytest.mark.parametrize("which", ["cnn", "ast_tiny", "crepe"])
def test_layers_resolve_and_report_their_width(adapters, waves, which):
    adapter = adapters[which]
    assert adapter.layers() == EXPECTED_WIDTHS[which]
    logits, outs = hooked_outputs(adapter, waves)
    assert set(outs) == set(EXPECTED_WIDTHS[which])  # every hook fired
    for name, width in adapter.layers().items():
        view = adapter.unit_view(name, outs[name], B)
        assert view.shape[:2] == (B, width), name
    # the last logical layer is the output layer, and its hook sees exactly the logits for one-frame models
    last = list(adapter.layer_paths())[-1]
    assert adapter.layer_paths()[last] == adapter.head_path
    if which != "crepe":
        torch.testing.assert_close(outs[last], logits)


def test_forward_shapes(adapters, waves):
    with torch.no_grad():
        assert adapters["cnn"](waves).shape == (B, NUM_CLASSES)
        assert adapters["ast_tiny"](waves).shape == (B, NUM_CLASSES)
        assert adapters["crepe"](waves).shape == (B, 360)


def test_unit_view_layouts(adapters, waves):
    """Conv units at dim 1, Linear units last, CREPE frames unfolded from the batch to positions."""
    cnn, ast, crepe = adapters["cnn"], adapters["ast_tiny"], adapters["crepe"]
    _, outs = hooked_outputs(cnn, waves)
    conv1 = outs["conv1"]  # [B, 16, 64 mels, 101 frames]
    assert conv1.shape == (B, 16, 64, 101)
    torch.testing.assert_close(cnn.unit_view("conv1", conv1, B, pre_activation=True), conv1.reshape(B, 16, -1))
    assert cnn.unit_view("head", outs["head"], B).shape == (B, NUM_CLASSES, 1)

    _, outs = hooked_outputs(ast, waves)
    fc1 = outs["block1.fc1"]  # [B, tokens, 128]; 1 s -> 98 frames padded to 100 -> 5 x 9 patches + 2 tokens
    assert fc1.shape == (B, 47, 128)
    torch.testing.assert_close(ast.unit_view("block1.fc1", fc1, B, pre_activation=True), fc1.transpose(1, 2))

    _, outs = hooked_outputs(crepe, waves)
    frames = 1 + SR // crepe.hop_length
    cls = crepe.unit_view("classifier", outs["classifier"], B)
    assert cls.shape == (B, 360, frames)
    with torch.no_grad():
        torch.testing.assert_close(cls, crepe.frame_logits(waves).transpose(1, 2))
    conv6 = outs["conv6"]  # [B * frames, 64, H, 1]
    view = crepe.unit_view("conv6", conv6, B)
    h = conv6.shape[2]
    assert view.shape == (B, 64, frames * h)
    torch.testing.assert_close(view[1, :, h * 3 : h * 4], conv6[frames + 3, :, :, 0])  # clip 1, frame 3


READERS = {  # logical layer -> (the module that reads its units, which call of it)
    "cnn": {f"conv{i}": (f"net.conv{i}.pool", 0) for i in range(1, 5)},
    **{name: {layer: reader for layer, reader in readers.items() if layer.startswith("block1")}
       for name, readers in TRANSFORMERS.items()},
}


@pytest.mark.parametrize("which", sorted(READERS))
def test_recorded_units_are_what_the_next_layer_reads_and_faithful_records_pre_activation(waves, which):
    """The probe records every unit as the next layer reads it (CNN: after BatchNorm and ReLU; AST/BEATs fc1:
    after GELU); `pre_activation=True` (faithful) records the hooked module's own output, as the original."""
    adapter = build_from_yaml(which).eval()
    readers = READERS[which]
    read = reader_inputs(adapter, readers, waves)
    _, module_out = hooked_outputs(adapter, waves)
    for pre_activation in (False, True):
        probe = ProbeModule(adapter, list(readers), "mean", pre_activation=pre_activation)
        probe.on_predict_start()
        with torch.no_grad():
            acts = probe.predict_step({"audio": waves, "clip_id": ["a", "b"]}, 0)["acts"]
        probe.on_predict_end()
        for layer in readers:
            raw = module_out[layer]
            raw = raw.reshape(B, raw.shape[1], -1) if raw.dim() == 4 else raw.movedim(-1, 1)
            want = (raw if pre_activation else read[layer]).mean(dim=2)
            torch.testing.assert_close(acts[layer], want, msg=f"{which} {layer} pre_activation={pre_activation}")
    post = {k: v.mean(dim=2) for k, v in read.items()}
    differs = [layer for layer in readers if not torch.allclose(post[layer], acts[layer])]
    assert differs == [layer for layer in readers if "fc1" in layer or "conv" in layer]  # where an activation sits


def test_ast_preprocessing_matches_feature_extractor(ast_tiny):
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(3, 12345, generator=g) * torch.tensor([[0.5], [0.01], [1.0]])
    wave[1, 6000:] = 0.0  # silence hits the log floor
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=100)
    ref = extractor([w.numpy() for w in wave], sampling_rate=SR, return_tensors="pt")["input_values"]
    ours = ast_tiny.preprocess(wave)
    assert ours.shape == ref.shape == (3, 100, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    # truncation to max_length, and clips shorter than one window are all padding
    long = torch.randn(1, SR * 2, generator=g)
    ref_long = extractor([long[0].numpy()], sampling_rate=SR, return_tensors="pt")["input_values"]
    torch.testing.assert_close(ast_tiny.preprocess(long), ref_long, rtol=1e-5, atol=1e-4)
    short = ast_tiny.preprocess(torch.randn(2, 300, generator=g))
    assert torch.allclose(short, torch.full_like(short, -AUDIOSET_MEAN / (2 * AUDIOSET_STD)))


def test_preprocess_resamples_other_rates(ast_tiny, cnn):
    wave44 = sine(440.0).unsqueeze(0)
    wave44 = resample(wave44, SR, 44100)
    for adapter in (ast_tiny, cnn):
        torch.testing.assert_close(adapter.preprocess(wave44, sr=44100), adapter.preprocess(resample(wave44, 44100, SR)))


def test_ast_from_local_pretrained_reinitialises_a_head_of_another_size(tmp_path, ast_tiny):
    ast_tiny.net.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(1)
    loaded = ASTAdapter(num_classes=3, pretrained=str(tmp_path / "ckpt"), max_length=100, num_mel_bins=64)
    assert loaded.layers()["head"] == 3
    src, dst = ast_tiny.state_dict(), loaded.state_dict()
    key = "net.audio_spectrogram_transformer.layers.1.mlp.fc1.weight"
    torch.testing.assert_close(dst[key], src[key])
    with pytest.raises(ValueError, match="max_length=100 but max_length=1024"):
        ASTAdapter(num_classes=3, pretrained=str(tmp_path / "ckpt"), num_mel_bins=64)


def test_crepe_matches_torchcrepe(crepe):
    """Same frames as torchcrepe.preprocess and, after a sigmoid, the same probabilities as torchcrepe.infer."""
    wave = sine(300.0, seconds=0.25).unsqueeze(0)
    ref_frames = next(torchcrepe.preprocess(wave, SR, hop_length=crepe.hop_length))
    frames = crepe.preprocess(wave)[0]
    torch.testing.assert_close(frames, ref_frames)
    with torch.no_grad():
        probs = torch.sigmoid(crepe.frame_logits(wave)[0])
        ref = torchcrepe.Crepe("tiny")
        ref.load_state_dict(crepe.net.state_dict())
        torch.testing.assert_close(probs, ref.eval()(ref_frames))


def cents_error(adapter: CrepeAdapter, freq: float, seconds: float) -> float:
    with torch.no_grad():
        logits = adapter(sine(freq, seconds).unsqueeze(0))
    found = adapter.bin_frequencies()[int(logits.argmax())]
    return abs(1200 * math.log2(found / freq))


def test_crepe_tiny_finds_the_pitch_of_a_sine(crepe):
    for freq in (440.0, 150.0, 1000.0):
        assert cents_error(crepe, freq, 0.5) < 100.0, freq


def test_crepe_full_finds_the_pitch_of_a_sine():
    full = CrepeAdapter("full", hop_length=1024).eval()
    assert full.layers()["conv1"] == 1024 and full.layers()["classifier"] == 360
    assert cents_error(full, 440.0, 0.25) < 100.0


def test_crepe_batch_norms_stay_frozen_in_train_mode(crepe, waves):
    with torch.no_grad():
        before = crepe(waves)
        crepe.train()
        try:
            assert crepe.training and not crepe.net.conv1_BN.training
            torch.testing.assert_close(crepe(waves), before)
        finally:
            crepe.eval()


def test_crepe_bin_frequencies_follow_torchcrepe_cents():
    f = bin_frequencies()
    assert f.shape == (360,)
    assert f[0] == pytest.approx(31.70, abs=0.01) and f[-1] == pytest.approx(torchcrepe.MAX_FMAX, abs=1.0)
    np.testing.assert_allclose(1200 * np.log2(f[1:] / f[:-1]), 20.0)  # 20 cents apart
    # one cent above each centre falls in that bin according to torchcrepe's own conversion
    bins = torchcrepe.convert.frequency_to_bins(torch.tensor(f * 2 ** (1 / 1200)))
    assert bins.tolist() == list(range(360))


def test_crepe_rejects_unknown_capacity():
    with pytest.raises(ValueError, match="capacity must be one of"):
        CrepeAdapter("huge")


def test_resolve_layers(adapters):
    cnn, ast = adapters["cnn"], adapters["ast_tiny"]
    assert resolve_layers(cnn, "all") == ["conv1", "conv2", "conv3", "conv4", "head"]
    assert resolve_layers(cnn, "last") == ["head"]
    assert resolve_layers(adapters["crepe"], "last") == ["classifier"]
    assert resolve_layers(cnn, "conv2") == ["conv2"]
    assert resolve_layers(cnn, ["head", "conv1", "head"]) == ["head", "conv1"]
    assert resolve_layers(ast, OmegaConf.create(["block*.fc1", "head"])) == ["block0.fc1", "block1.fc1", "head"]
    with pytest.raises(UnknownLayerError) as err:
        resolve_layers(cnn, ["conv1", "conv9"])
    assert str(err.value) == "unknown layer 'conv9' for SmallCNN; available: conv1, conv2, conv3, conv4, head"
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'block7\.\*'.*available: block0.attn_out"):
        resolve_layers(ast, "block7.*")
    with pytest.raises(UnknownLayerError, match="empty layer list"):
        resolve_layers(cnn, [])


def test_small_cnn_learns_a_separable_task():
    """Low vs high tones at random loudness: a few CPU seconds of training reach perfect accuracy."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    freqs = torch.where(torch.arange(64) % 2 == 0, 300.0, 2400.0) * (1 + 0.1 * torch.rand(64, generator=g))
    amps = 10 ** (-1.5 * torch.rand(64, 1, generator=g))
    t = torch.arange(SR // 4) / SR
    x = amps * torch.sin(2 * math.pi * freqs[:, None] * t) + 0.01 * torch.randn(64, SR // 4, generator=g)
    y = torch.arange(64) % 2
    model = SmallCNN(num_classes=2)
    assert sum(p.numel() for p in model.parameters()) < 150_000
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        for i in range(0, 48, 8):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[48:]).argmax(1) == y[48:]).float().mean().item()
    assert accuracy >= 0.9


def test_small_cnn_clip_norm_and_validation():
    model = SmallCNN(num_classes=3, norm="clip").eval()
    noise = torch.randn(1, SR, generator=torch.Generator().manual_seed(2))
    feats = model.preprocess(0.5 * noise)
    assert feats.mean().abs() < 1e-4 and (feats.std() - 1).abs() < 1e-3
    quiet = model.preprocess(0.05 * noise)
    torch.testing.assert_close(quiet, feats, atol=1e-3, rtol=1e-3)  # loudness-invariant
    with pytest.raises(ValueError, match="norm must be one of"):
        SmallCNN(num_classes=3, norm="layer")


def test_adapters_are_dtype_and_device_agnostic(adapters, waves):
    """No hard-coded devices in the code; features are buffers that move with `.to()`."""
    for path in ("cnn.py", "ast.py", "crepe.py", "registry.py"):
        source = (REPO / "and_lightning" / "models" / path).read_text()
        assert not re.search(r"\.cuda\(|['\"]cuda", source), path
    for name in ("cnn", "ast_tiny"):
        adapter = adapters[name]
        with torch.no_grad():
            expected = adapter(waves)
            try:
                adapter.to(torch.float64)
                assert all(b.dtype == torch.float64 for b in adapter.buffers() if b.is_floating_point())
                torch.testing.assert_close(adapter(waves.double()).float(), expected, rtol=1e-3, atol=1e-3)
            finally:
                adapter.to(torch.float32)


def test_ast_config_names_a_real_checkpoint():
    cfg = OmegaConf.load(MODEL_CONF / "ast.yaml")
    assert cfg._target_ == "and_lightning.models.ast.ASTAdapter"
    assert cfg.pretrained == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert (cfg.max_length, cfg.num_mel_bins) == (1024, 128)
