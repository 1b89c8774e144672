"""Self-supervised pre-training: the NT-Xent loss by hand, augmentations, the contrastive module on every
trainable adapter, and strategy=ssl / ssl_finetune through a real Trainer with the backbone cache."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from and_lightning.checkpoints import build, load_checkpoint
from and_lightning.lit.contrastive import ContrastiveModule
from and_lightning.pretraining import ssl_checkpoint_path
from and_lightning.ssl.augment import WaveAugment
from and_lightning.ssl.losses import nt_xent
from and_lightning.training import train

TINY = ["data.index.clips_per_class=5", "data.batch_size=10", "trainer.max_epochs=1", "callbacks=none",
        "logger=none", "strategy.pretrain.epochs=1", "strategy.pretrain.batch_size=8"]


def test_nt_xent_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # scale does not matter: embeddings are L2-normalised
    # anchor z1[0]: partner z2[0] (cos 1), others z1[1] (cos 0), z2[1] (cos 0); every anchor is alike by symmetry
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)
    # swapping the partners makes the loss large: each anchor's partner is orthogonal and a negative is equal
    worse = nt_xent(z1, z2.flip(0), t).item()
    assert worse > expected + 1.0
    with pytest.raises(ValueError, match="two \\[N >= 2, D\\] batches"):
        nt_xent(z1[:1], z2[:1], t)


def test_augment_keeps_pitch_and_changes_level_within_bounds():
    sr, n = 16000, 16000
    t = torch.arange(n) / sr
    wave = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.sin(2 * math.pi * 1000 * t)])
    aug = WaveAugment(gain_db=6.0, snr_db=(30.0, 40.0), mask_fraction=0.1)
    out = aug(wave, torch.Generator().manual_seed(0))
    assert out.shape == wave.shape and not torch.equal(out, wave)
    freqs = torch.fft.rfftfreq(n, 1 / sr)
    peaks = freqs[torch.fft.rfft(out).abs().argmax(dim=1)]
    assert peaks.tolist() == pytest.approx([440.0, 1000.0], abs=2.0)  # shift, gain and noise keep the pitch
    ratio_db = 20 * torch.log10(out.pow(2).mean(1).sqrt() / wave.pow(2).mean(1).sqrt())
    assert (ratio_db > -6.0 - 1.0).all() and (ratio_db < 6.0 + 0.5).all()  # the mask only lowers the level
    again = aug(wave, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="snr_db"):
        WaveAugment(snr_db=(40.0, 20.0))


@pytest.mark.parametrize("model", ["cnn", "ast_tiny", "beats_tiny"])
def test_contrastive_step_trains_the_backbone_of_every_adapter(compose_in, model):
    cfg = compose_in("train", [f"model={model}"])
    torch.manual_seed(0)
    adapter = build(cfg.model)
    module = ContrastiveModule(adapter, partial(torch.optim.SGD, lr=0.1), WaveAugment(), projection_dim=16,
                               hidden_dim=32)
    wave = 0.1 * torch.randn(4, 16000)
    adapter.eval()  # no dropout: the embedding is a deterministic function of the input
    emb = module.embed(wave)
    assert emb.shape == (4, adapter.head().in_features)
    assert not adapter.head()._forward_pre_hooks  # the capture hook is removed again
    adapter.train()
    assert module.training_step({"audio": wave[:1]}, 0) is None  # one clip: no negatives, the batch is skipped
    loss = module.training_step({"audio": wave, "label": torch.zeros(4, dtype=torch.long)}, 0)
    loss.backward()
    body = [p for n, p in adapter.named_parameters() if not n.startswith(adapter.head_path)]
    assert all(p.grad is None for p in adapter.head().parameters())  # the head is not part of the objective
    assert sum(p.grad.abs().sum().item() for p in body if p.grad is not None) > 0


def test_ssl_pretrains_once_then_probe_and_finetune_share_the_backbone(compose_in):
    probe_cfg = compose_in("train", TINY + ["strategy=ssl"])
    cached = ssl_checkpoint_path(probe_cfg)
    assert not cached.exists()
    probe = train(probe_cfg)
    assert cached.is_file() and 0.0 <= probe["test/acc"] <= 1.0
    backbone = load_checkpoint(cached)["state_dict"]
    probed = load_checkpoint(probe["checkpoint_path"])
    changed = {k for k in backbone if not torch.equal(backbone[k], probed["state_dict"][k])}
    assert changed and all(k.startswith("net.fc.") for k in changed), changed  # frozen: only the head moved
    assert probed["config"]["strategy"]["init_ckpt"] == str(cached)

    mtime = cached.stat().st_mtime_ns
    tuned_cfg = compose_in("train", TINY + ["strategy=ssl_finetune"])
    assert ssl_checkpoint_path(tuned_cfg) == cached  # the same pre-training settings: one backbone
    tuned = load_checkpoint(train(tuned_cfg)["checkpoint_path"])["state_dict"]
    assert cached.stat().st_mtime_ns == mtime  # reused, not trained again
    assert not torch.equal(tuned["net.conv1.conv.weight"], backbone["net.conv1.conv.weight"])

    other = compose_in("train", TINY + ["strategy=ssl", "strategy.pretrain.temperature=0.5"])
    assert ssl_checkpoint_path(other) != cached  # a changed setting never reuses a stale backbone


def test_ssl_strategy_errors_are_clear(compose_in, tmp_path):
    with pytest.raises(ValueError, match="strategy=ssl pre-trains its own backbone"):
        train(compose_in("train", TINY + ["strategy=ssl", f"strategy.init_ckpt={tmp_path}/x.pt"]))
    with pytest.raises(ValueError, match="strategy.pretrain.objective='masked'"):
        train(compose_in("train", TINY + ["strategy=ssl", "strategy.pretrain.objective=masked"]))


@pytest.mark.parametrize("model", ["ast_tiny", "beats_tiny"])
def test_ssl_linear_probe_on_transformer_backbones(compose_in, model):
    cfg = compose_in("train", TINY + ["strategy=ssl", f"model={model}"])
    probe = load_checkpoint(train(cfg)["checkpoint_path"])
    backbone = load_checkpoint(ssl_checkpoint_path(cfg))["state_dict"]
    head = build(cfg.model).head_path + "."
    changed = {k for k in backbone if not torch.equal(backbone[k], probe["state_dict"][k])}
    assert changed and all(k.startswith(head) for k in changed), (head, changed)
