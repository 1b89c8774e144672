"""BEATs: preprocessing vs a hand-written Kaldi fbank, 16 kHz resampling, shapes, official checkpoint layout,
relative-position buckets, the encoder layer vs the official arithmetic, logical layers, one training step, and
padding: a clip zero-padded in a batch gets the values it gets alone (BEATs and AST), float64 input."""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from and_lightning.checkpoints import CheckpointError
from and_lightning.data.audio_io import save_audio
from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.lit.probe import ProbeModule
from and_lightning.models.beats import BEATsAdapter, beats_fbank
from and_lightning.models.beats_encoder import BEATs, BEATsConfig, WeightNormConv1d, relative_position_bucket

MODEL_CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
SR = 16000
B = 2
NUM_CLASSES = 5
TINY = dict(input_patch_size=16, embed_dim=32, encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4)

# The official BEATs key layout of a 1-layer model (embed_dim != encoder_embed_dim, so post_extract_proj exists;
# conv_bias=False, so no patch_embedding.bias), written out by hand from microsoft/unilm BEATs.py + backbone.py.
OFFICIAL_KEYS_ONE_LAYER = {
    "patch_embedding.weight",
    "layer_norm.weight", "layer_norm.bias",
    "post_extract_proj.weight", "post_extract_proj.bias",
    "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
    "encoder.layers.0.self_attn.relative_attention_bias.weight",
    "encoder.layers.0.self_attn.k_proj.weight", "encoder.layers.0.self_attn.k_proj.bias",
    "encoder.layers.0.self_attn.v_proj.weight", "encoder.layers.0.self_attn.v_proj.bias",
    "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.q_proj.bias",
    "encoder.layers.0.self_attn.out_proj.weight", "encoder.layers.0.self_attn.out_proj.bias",
    "encoder.layers.0.self_attn.grep_linear.weight", "encoder.layers.0.self_attn.grep_linear.bias",
    "encoder.layers.0.self_attn.grep_a",
    "encoder.layers.0.self_attn_layer_norm.weight", "encoder.layers.0.self_attn_layer_norm.bias",
    "encoder.layers.0.fc1.weight", "encoder.layers.0.fc1.bias",
    "encoder.layers.0.fc2.weight", "encoder.layers.0.fc2.bias",
    "encoder.layers.0.final_layer_norm.weight", "encoder.layers.0.final_layer_norm.bias",
    "encoder.layer_norm.weight", "encoder.layer_norm.bias",
}


def build_from_yaml(name: str, num_classes: int = NUM_CLASSES, **overrides):
    model = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    cfg = OmegaConf.merge({"data": {"num_classes": num_classes}}, {"model": model})
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert node.pop("name") == name
    node.update(overrides)
    return instantiate(node, _convert_="all")


@pytest.fixture(scope="module")
def tiny() -> BEATsAdapter:
    torch.manual_seed(0)
    return build_from_yaml("beats_tiny").eval()


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(SR) / SR
    return torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.2 * torch.randn(SR, generator=g)])


def tone(freq: float, sr: int, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t)).float()


# ---------------------------------------------------------------- preprocessing

def reference_kaldi_fbank(x: np.ndarray, sr: int = SR, n_mels: int = 128) -> np.ndarray:
    """Kaldi fbank written out in numpy (float64): 25 ms povey frames every 10 ms (snip edges), DC removal,
    pre-emphasis 0.97, 512-point power spectrum, 128 triangular mel filters 20 Hz..Nyquist, natural log."""
    win, hop, n_fft = sr * 25 // 1000, sr * 10 // 1000, 512
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop: i * hop + win] for i in range(n)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames * povey, n=n_fft)) ** 2  # [n, 257]

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (n_mels + 1)
    fft_mel = mel(np.arange(n_fft // 2) * sr / n_fft)  # Kaldi ignores the Nyquist bin
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        up = (fft_mel - left) / (centre - left)
        down = (right - fft_mel) / (right - centre)
        banks[m, : n_fft // 2] = np.maximum(0.0, np.minimum(up, down))
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


def test_fbank_matches_a_hand_written_kaldi_reference():
    g = torch.Generator().manual_seed(1)
    wave = 0.3 * torch.randn(2, 8000, generator=g)
    fbank = beats_fbank(wave)
    assert fbank.shape == (2, 1 + (8000 - 400) // 160, 128) == (2, 48, 128)
    for i in range(2):  # BEATs: x 2^15, then (fbank - 15.41663) / (2 * 6.55582)
        expected = (reference_kaldi_fbank(wave[i].double().numpy() * 32768.0) - 15.41663) / (2 * 6.55582)
        np.testing.assert_allclose(fbank[i].numpy(), expected, atol=2e-4, rtol=0)
    # the x 2^15 scale is a constant log offset of 2 ln(2^15) before normalisation (mel bins that hold no FFT
    # bin sit at the log floor either way)
    raw = reference_kaldi_fbank(wave[0].double().numpy())
    lit = raw > math.log(np.finfo(np.float32).eps) + 1
    assert lit.mean() > 0.9
    offset = fbank[0].numpy()[lit] - (raw[lit] - 15.41663) / (2 * 6.55582)
    np.testing.assert_allclose(offset, 2 * math.log(2**15) / (2 * 6.55582), atol=1e-3)


def test_48khz_audio_is_resampled_not_fed_as_16khz(tiny):
    for freq in (440.0, 3000.0):
        native = tiny.preprocess(tone(freq, 16000)[None])
        resampled = tiny.preprocess(tone(freq, 48000)[None], sr=48000)
        assert resampled.shape == native.shape == (1, 98, 128)
        strong = native[0] > native[0].max() - 1.0  # the bins the tone excites
        assert (resampled[0][strong] - native[0][strong]).abs().max() < 0.01
        assert torch.equal(resampled[0].argmax(-1), native[0].argmax(-1))  # same peak mel bin in every frame
        # the original AND bug: 48 kHz samples read as 16 kHz -> 3x the frames, the peak at a lower bin
        buggy = beats_fbank(tone(freq, 48000)[None])
        assert buggy.shape[1] == 298 and buggy[0, 50].argmax() < native[0, 50].argmax()


def test_too_short_audio_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="at least 16 frames"):
        tiny(torch.zeros(1, 2000))  # 11 frames < one 16-frame patch
    with pytest.raises(ValueError, match=r"T >= 400"):
        beats_fbank(torch.zeros(1, 100))


# ---------------------------------------------------------------- shapes and token order

@pytest.mark.parametrize("seconds", [1.0, 2.3])
def test_forward_shapes(tiny, seconds):
    wave = torch.randn(B, int(SR * seconds)) * 0.1
    frames = 1 + (wave.shape[1] - 400) // 160
    with torch.no_grad():
        tokens = tiny.tokens(wave)
        logits = tiny(wave)
    assert tokens.shape == (B, (frames // 16) * 8, 64)
    assert logits.shape == (B, NUM_CLASSES)
    torch.testing.assert_close(logits, tiny.fc(tokens.mean(dim=1)))


def test_tokens_are_time_major(tiny):
    """Token t * 8 + f holds the patch of frames 16t.. and mel bins 16f..: perturb one patch, find its token."""
    fbank = torch.zeros(1, 64, 128)
    fbank[0, 32:48, 80:96] = 3.0  # time patch 2, frequency patch 5
    seen = {}
    handle = tiny.beats.layer_norm.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        tiny.beats.extract_features(fbank)
    handle.remove()
    x = seen["x"][0]  # [32 tokens, embed]
    assert x.shape == (4 * 8, 32)
    differs = ((x - x[0]).abs().sum(-1) > 1e-4).nonzero().flatten().tolist()
    assert differs == [2 * 8 + 5]


def test_base_config_shapes():
    """conf/model/beats.yaml's architecture has the official tensor shapes (built on the meta device)."""
    values = OmegaConf.to_container(OmegaConf.load(MODEL_CONF / "beats.yaml").config)
    cfg = BEATsConfig.from_dict(values)
    with torch.device("meta"):
        model = BEATs(cfg)
    state = model.state_dict()
    expected = {
        "patch_embedding.weight": (512, 1, 16, 16), "layer_norm.weight": (512,),
        "post_extract_proj.weight": (768, 512), "encoder.pos_conv.0.weight_v": (768, 48, 128),
        "encoder.pos_conv.0.weight_g": (1, 1, 128), "encoder.pos_conv.0.bias": (768,),
        "encoder.layers.11.self_attn.relative_attention_bias.weight": (320, 12),
        "encoder.layers.3.self_attn.grep_linear.weight": (8, 64), "encoder.layers.3.self_attn.grep_a": (1, 12, 1, 1),
        "encoder.layers.0.self_attn.k_proj.weight": (768, 768), "encoder.layers.5.fc1.weight": (3072, 768),
        "encoder.layers.5.fc2.weight": (768, 3072), "encoder.layer_norm.weight": (768,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    # 10 model-level tensors + 20 per layer (the shared relative-bias table listed under each layer)
    assert len(state) == 10 + 12 * 20 and "patch_embedding.bias" not in state
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 91e6  # BEATs is a 90 M-parameter model


# ---------------------------------------------------------------- checkpoint layouts

def test_official_key_layout():
    torch.manual_seed(0)
    cfg = BEATsConfig(**TINY)
    model = BEATs(cfg).eval()
    assert set(model.state_dict()) == OFFICIAL_KEYS_ONE_LAYER
    finetuned = BEATs(dataclasses.replace(cfg, finetuned_model=True, predictor_class=NUM_CLASSES))
    assert set(finetuned.state_dict()) == OFFICIAL_KEYS_ONE_LAYER | {"predictor.weight", "predictor.bias"}
    # two layers: the shared relative-bias table appears under every layer, as in the official state dict
    two = BEATs(dataclasses.replace(cfg, encoder_layers=2)).state_dict()
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" in two
    # a state dict in the official layout loads strictly into a fresh model and reproduces its outputs
    fresh = BEATs(cfg).eval()
    result = fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    fbank = torch.randn(1, 48, 128)
    with torch.no_grad():
        torch.testing.assert_close(fresh.extract_features(fbank), model.extract_features(fbank))


def test_official_checkpoint_file_loads_into_the_adapter(tmp_path):
    torch.manual_seed(0)
    cfg = BEATsConfig(**TINY, finetuned_model=True, predictor_class=NUM_CLASSES)
    official = BEATs(cfg).eval()
    path = tmp_path / "BEATs_tiny_finetuned.pt"
    torch.save({"cfg": cfg.to_dict(), "model": official.state_dict()}, path)
    adapter = BEATsAdapter(NUM_CLASSES, checkpoint=str(path)).eval()
    assert adapter.config.encoder_layers == 1 and adapter.beats.predictor is None
    torch.testing.assert_close(adapter.fc.weight, official.predictor.weight)  # predictor -> head
    wave = torch.randn(1, SR) * 0.1
    with torch.no_grad():
        expected = official.predictor(official.extract_features(beats_fbank(wave))).mean(dim=1)
        torch.testing.assert_close(adapter(wave), expected)
    # another class count: backbone loaded, head re-initialised
    other = BEATsAdapter(3, checkpoint=str(path))
    torch.testing.assert_close(other.beats.encoder.layers[0].fc1.weight, official.encoder.layers[0].fc1.weight)
    assert other.fc.weight.shape == (3, 64)
    # regularisation may be overridden; the architecture may not
    assert BEATsAdapter(3, checkpoint=str(path), config={"encoder_layerdrop": 0.0}).config.encoder_layerdrop == 0.0
    with pytest.raises(ValueError, match="encoder_layers=12 but the checkpoint has 1"):
        BEATsAdapter(3, checkpoint=str(path), config={"encoder_layers": 12})


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_parametrization_names_load_like_weight_g_and_v():
    """Both torch weight-norm namings of the conv positional embedding give the same weights as torch's own."""
    torch.manual_seed(0)
    channels, kernel, groups = 8, 4, 2
    for make in (torch.nn.utils.parametrizations.weight_norm, torch.nn.utils.weight_norm):
        conv = torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=groups)
        conv = make(conv, name="weight", dim=2)
        with torch.no_grad():
            for p in conv.parameters():
                p.add_(torch.randn_like(p))
        ours = WeightNormConv1d(channels, kernel, groups)
        ours.load_state_dict(conv.state_dict(), strict=True)
        x = torch.randn(2, channels, 10)
        torch.testing.assert_close(ours(x), conv(x))
    # a whole model saved with the parametrization names loads strictly
    model = BEATs(BEATsConfig(**TINY))
    state = model.state_dict()
    prefix = "encoder.pos_conv.0."
    renamed = {k.replace(prefix + "weight_g", prefix + "parametrizations.weight.original0")
               .replace(prefix + "weight_v", prefix + "parametrizations.weight.original1"): v for k, v in state.items()}
    fresh = BEATs(BEATsConfig(**TINY))
    fresh.load_state_dict(renamed, strict=True)
    torch.testing.assert_close(fresh.encoder.pos_conv[0].weight_g, state[prefix + "weight_g"])
    assert prefix + "parametrizations.weight.original0" in renamed  # the caller's dict is not modified


def test_mybeatsmodel_state_dict_loads(tmp_path):
    """The original AND checkpoint (beats.* + fc.*) is exactly this adapter's state-dict layout."""
    torch.manual_seed(0)
    source = BEATsAdapter(NUM_CLASSES, config=TINY).eval()
    assert {k.split(".")[0] for k in source.state_dict()} == {"beats", "fc"}
    bare, wrapped = tmp_path / "mybeats.pt", tmp_path / "mybeats_cfg.pt"
    torch.save(source.state_dict(), bare)
    torch.save({"cfg": source.config.to_dict(), "model": source.state_dict()}, wrapped)
    wave = torch.randn(2, SR) * 0.1
    for path, config in ((bare, TINY), (wrapped, None)):
        loaded = BEATsAdapter(NUM_CLASSES, checkpoint=str(path), config=config).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(wave), source(wave))


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nowhere.pt"):
        BEATsAdapter(NUM_CLASSES, checkpoint=str(tmp_path / "nowhere.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": [1, 2]}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong.pt: expected the official BEATs format"):
        BEATsAdapter(NUM_CLASSES, checkpoint=str(wrong))
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint"):
        BEATsAdapter(NUM_CLASSES, checkpoint=str(text))
    mismatched = tmp_path / "mismatched.pt"
    torch.save({"cfg": {**TINY, "encoder_ffn_embed_dim": 96}, "model": BEATs(BEATsConfig(**TINY)).state_dict()},
               mismatched)
    with pytest.raises(CheckpointError, match="does not match its BEATs config"):
        BEATsAdapter(NUM_CLASSES, checkpoint=str(mismatched))
    with pytest.raises(ValueError, match="unknown BEATs fields \\['encoder_layer'\\]"):
        BEATsAdapter(NUM_CLASSES, config={"encoder_layer": 2})


# ---------------------------------------------------------------- relative positions and the encoder layer

def test_relative_position_buckets_by_hand():
    """num_buckets 320, max_distance 800: 160 buckets per direction, exact below 80, log-spaced up to 800.
    e.g. -200 -> 80 + floor(ln(200/80) / ln(10) * 80) = 80 + floor(31.83) = 111; +200 -> 160 + 111."""
    offsets = torch.tensor([0, -1, 1, -79, 79, -80, 80, -200, 200, -400, -799, -800, 5000])
    expected = [0, 1, 161, 79, 239, 80, 240, 111, 271, 135, 159, 159, 319]
    assert relative_position_bucket(offsets, 320, 800).tolist() == expected


def official_layer(layer, x: torch.Tensor, pos_bias: torch.Tensor | None):
    """One encoder layer in the official arithmetic ([T, B, D], alpha = 32 max-shift, fairseq head folding)."""
    attn = layer.self_attn
    t, b, d = x.shape
    h, hd = attn.num_heads, d // attn.num_heads
    scaling, alpha = hd**-0.5, 32
    if pos_bias is None:
        pos = torch.arange(t)
        pos_bias = attn.relative_attention_bias(relative_position_bucket(pos[None] - pos[:, None], 320, 800))
        pos_bias = pos_bias.permute(2, 0, 1).unsqueeze(0).repeat(b, 1, 1, 1).view(b * h, t, t)
    q = attn.q_proj(x) * scaling / alpha
    q = q.contiguous().view(t, b * h, hd).transpose(0, 1)
    k = attn.k_proj(x).contiguous().view(t, b * h, hd).transpose(0, 1)
    v = attn.v_proj(x).contiguous().view(t, b * h, hd).transpose(0, 1)
    w = torch.bmm(q, k.transpose(1, 2))
    w = (w - w.max(dim=-1, keepdim=True)[0]) * alpha
    query_layer = q.view(b, h, t, hd) * alpha / scaling
    gate_a, gate_b = torch.sigmoid(attn.grep_linear(query_layer).view(b, h, t, 2, 4).sum(-1)).chunk(2, dim=-1)
    gate = gate_a * (gate_b * attn.grep_a - 1.0) + 2.0
    w = w + gate.view(b * h, t, 1) * pos_bias
    out = torch.bmm(F.softmax(w, dim=-1), v).transpose(0, 1).contiguous().view(t, b, d)
    out = attn.out_proj(out)
    a = layer.deep_norm_alpha
    x = layer.self_attn_layer_norm(x * a + out)
    x = layer.final_layer_norm(x * a + layer.fc2(F.gelu(layer.fc1(x))))
    return x, pos_bias


def test_encoder_layers_match_the_official_arithmetic():
    torch.manual_seed(0)
    model = BEATs(BEATsConfig(**{**TINY, "encoder_layers": 2})).eval()
    with torch.no_grad():  # make the relative bias and its gate matter
        for layer in model.encoder.layers:
            layer.self_attn.relative_attention_bias.weight.normal_(0, 1.0)
            layer.self_attn.grep_linear.weight.normal_(0, 0.5)
            layer.self_attn.grep_a.uniform_(0.5, 2.0)
    assert model.encoder.layers[0].deep_norm_alpha == pytest.approx(4 ** 0.25)
    x = torch.randn(3, 40, 64)
    with torch.no_grad():
        ours, pos = x, None
        ref, ref_pos = x.transpose(0, 1), None
        for layer in model.encoder.layers:
            ours, pos = layer(ours, pos)
            ref, ref_pos = official_layer(layer, ref, ref_pos)
            torch.testing.assert_close(ours, ref.transpose(0, 1), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- logical layers, unit views, training

def test_layers_resolve_with_their_widths(tiny, waves):
    assert tiny.layers() == {"block0.fc1": 128, "block0.fc2": 64, "block1.fc1": 128, "block1.fc2": 64,
                             "head": NUM_CLASSES}
    assert tiny.head_path == "fc" and tiny.head() is tiny.fc
    outs = {}
    handles = [tiny.get_submodule(path).register_forward_hook(lambda m, i, o, n=name: outs.__setitem__(n, o))
               for name, path in tiny.layer_paths().items()]
    try:
        with torch.no_grad():
            logits = tiny(waves)
    finally:
        for h in handles:
            h.remove()
    tokens = (98 // 16) * 8
    for name, width in tiny.layers().items():
        view = tiny.unit_view(name, outs[name], B)
        assert view.shape == ((B, width, tokens) if name != "head" else (B, width, 1)), name
    assert outs["block0.fc1"].shape == (B, tokens, 128)  # batch-first: [B, tokens, units]
    torch.testing.assert_close(tiny.unit_view("head", outs["head"], B)[:, :, 0], logits)


def test_per_token_pooling_reproduces_the_original_head(tiny, waves):
    """pooling=per_token: same logits; the head's positions are per-token logits (token 0 = the original's fc)."""
    per_token = BEATsAdapter(NUM_CLASSES, config=OmegaConf.to_container(
        OmegaConf.load(MODEL_CONF / "beats_tiny.yaml").config), pooling="per_token").eval()
    per_token.load_state_dict(tiny.state_dict())
    seen = {}
    handle = per_token.fc.register_forward_hook(lambda m, i, o: seen.setdefault("head", o))
    with torch.no_grad():
        logits = per_token(waves)
        tokens = tiny.tokens(waves)
        torch.testing.assert_close(logits, tiny(waves))
    handle.remove()
    view = per_token.unit_view("head", seen["head"], B)
    assert view.shape == (B, NUM_CLASSES, 48)
    torch.testing.assert_close(view.mean(dim=2), logits)
    torch.testing.assert_close(view[:, :, 0], tiny.fc(tokens[:, 0]))
    with pytest.raises(ValueError, match="pooling must be one of"):
        BEATsAdapter(NUM_CLASSES, config=TINY, pooling="token1")


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_from_yaml("beats_tiny", num_classes=3)
    g = torch.Generator().manual_seed(0)
    wave = 0.2 * torch.randn(6, SR, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fbank = model.preprocess(wave)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model.fc(model.beats.extract_features(fbank).mean(dim=1)), labels)

    model.eval()
    with torch.no_grad():
        before = loss().item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    torch.manual_seed(1)
    optimizer.zero_grad()
    loss().backward()
    assert model.beats.patch_embedding.weight.grad.abs().sum() > 0  # gradients reach the first layer
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < before, (before, after)


def test_layer_wise_gradient_decay_scales_earlier_gradients():
    """Ratio r before every layer: last layer's weights keep their gradient, layer 0 gets r, the embedding r^2."""
    torch.manual_seed(0)
    grads = {}
    for ratio in (1.0, 0.5):
        torch.manual_seed(0)
        model = BEATsAdapter(3, config={**TINY, "encoder_layers": 2, "layer_wise_gradient_decay_ratio": ratio}).eval()
        model(torch.randn(2, SR, generator=torch.Generator().manual_seed(0)) * 0.1).sum().backward()
        layers = model.beats.encoder.layers
        grads[ratio] = [layers[1].fc1.weight.grad, layers[0].fc1.weight.grad, model.beats.patch_embedding.weight.grad]
    for plain, decayed, scale in zip(grads[1.0], grads[0.5], (1.0, 0.5, 0.25)):
        torch.testing.assert_close(decayed, plain * scale)


# ---------------------------------------------------------------- padding: a clip's values do not depend on its batch

PADDED_LENGTHS = [16000, 7000, 11000, 3000]  # samples; n / 16000 is exact, so a clip alone is cut to exactly n


def write_clips(root: Path) -> list[ClipRecord]:
    """WAVs of the lengths above (noise, distinct per clip), as records of the real dataset class."""
    g = torch.Generator().manual_seed(3)
    records = []
    for i, n in enumerate(PADDED_LENGTHS):
        path = root / f"clip{i}.wav"
        save_audio(path, 0.2 * torch.randn(n, generator=g), SR)
        records.append(ClipRecord(f"clip{i}", str(path), label=0, fold=1))
    return records


def probe(adapter, records: list[ClipRecord], clip_seconds: float, layers: list[str], reduction: str):
    """Logits and the probe's per-unit activations of one batch of `records` loaded by ClipDataset."""
    batch = next(iter(DataLoader(ClipDataset(records, SR, clip_seconds), batch_size=len(records))))
    module = ProbeModule(adapter, layers, reduction)
    module.on_predict_start()
    try:
        with torch.no_grad():
            acts = module.predict_step(batch, 0)["acts"]
            logits = adapter.run(batch["audio"], batch.get("length"))
    finally:
        module.on_predict_end()
    return logits, acts


@pytest.mark.parametrize("model, layers", [
    ("beats_tiny", ["block0.fc1", "block1.fc2", "head"]),
    ("ast_tiny", ["block0.fc1", "block1.fc2", "head"]),
])
@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_a_clip_padded_in_a_batch_gets_the_values_it_gets_alone(tmp_path, model, layers, reduction):
    """ClipDataset pads 0.19-1 s clips to 1 s in one batch; each clip's logits and recorded activations equal
    those of the clip alone, loaded at its own length (no padding at all)."""
    torch.manual_seed(0)
    adapter = build_from_yaml(model).eval()
    records = write_clips(tmp_path)
    logits, acts = probe(adapter, records, 1.0, layers, reduction)
    for i, (record, n) in enumerate(zip(records, PADDED_LENGTHS)):
        alone_logits, alone = probe(adapter, [record], n / SR, layers, reduction)
        torch.testing.assert_close(logits[i], alone_logits[0], atol=1e-5, rtol=1e-5, msg=f"{model} clip {i}")
        for layer in layers:
            torch.testing.assert_close(acts[layer][i], alone[layer][0], atol=1e-5, rtol=1e-5,
                                       msg=f"{model} {layer} clip {i}")


def test_per_token_head_and_token0_ignore_padding_too(tmp_path):
    torch.manual_seed(0)
    adapter = build_from_yaml("beats_tiny", pooling="per_token").eval()
    records = write_clips(tmp_path)
    for reduction in ("mean", "token0"):
        logits, acts = probe(adapter, records, 1.0, ["head"], reduction)
        alone_logits, alone = probe(adapter, records[1:2], PADDED_LENGTHS[1] / SR, ["head"], reduction)
        torch.testing.assert_close(logits[1], alone_logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts["head"][1], alone["head"][0], atol=1e-5, rtol=1e-5)


def test_float64_input_runs_in_float64(tiny, waves):
    model = copy.deepcopy(tiny).double()
    with torch.no_grad():
        logits = model(waves.double())
        padded = model.run(waves.double(), torch.tensor([SR, 9000]))
        expected = tiny(waves)
    assert logits.dtype == padded.dtype == torch.float64
    torch.testing.assert_close(logits.float(), expected, atol=1e-5, rtol=1e-4)
    assert beats_fbank(waves.double()).dtype == torch.float64
