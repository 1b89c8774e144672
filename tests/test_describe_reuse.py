"""Work shared across layers and stages (summaries, calibration, open concepts by text; text embeddings kept on
disk) leaves the outputs byte for byte as computed from scratch: per layer vs all layers, cold vs warm caches."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate

from and_lightning.dissection import dissect
from and_lightning.stages.caption import read_captions
from and_lightning.stages.describe import concept_matrix, describe_layer
from and_lightning.store.activations import ActivationStore
from and_lightning.store.kvcache import KVCache
from conftest import compose_cfg


def outputs(dissection: Path, run: Path) -> dict[str, bytes]:
    files = {"descriptions.jsonl": (dissection / "descriptions.jsonl").read_bytes()}
    files.update({p.name: p.read_bytes() for p in (run / "evaluate").iterdir() if p.suffix in (".csv", ".md")})
    files["scored descriptions.jsonl"] = (run / "evaluate" / "descriptions.jsonl").read_bytes()  # per-unit scores
    return files


@pytest.mark.slow
def test_describe_and_evaluate_records_equal_from_scratch_and_with_warm_caches(trained_cnn):
    ckpt, root, overrides = trained_cnn
    cfg = lambda stage: compose_cfg("dissect", root, [*overrides, f"ckpt_path={ckpt}", f"stage={stage}",  # noqa: E731
                                                      "logger=none", "paths.cache_dir=" + str(root / "reuse_cache")])
    first = dissect(cfg("all"))
    out, run = Path(first["dissection_dir"]), Path(cfg("all").paths.output_dir)
    cold = outputs(out, run)
    embeddings = KVCache(root / "reuse_cache" / "text_embeddings.sqlite")
    assert len(embeddings) > 0  # describe and evaluate kept their text embeddings

    # warm: describe and evaluate again from the stored embeddings (the tables' floats must not move a bit)
    for p in [out / "descriptions.jsonl", *(out / "layers").iterdir()]:
        p.unlink()
    shutil.rmtree(run / "evaluate")
    dissect(cfg("describe"))
    dissect(cfg("evaluate"))
    assert outputs(out, run) == cold

    # each layer on its own, with nothing shared (a fresh encoder and memo per layer): the same records
    c = cfg("describe")
    store = ActivationStore.open(first["store"])
    captions = read_captions(out / "captions.jsonl")
    lines = []
    for layer in store.layers:
        encoder = instantiate(c.text_encoder)
        P, p_is_prob = concept_matrix("db", captions, store.clip_ids, list(c.concepts.concepts), encoder, None,
                                      c.describe.closed_set.scale)
        records = describe_layer(store, layer, captions, list(c.concepts.concepts), P, p_is_prob, encoder, None,
                                 c.describe, "head")
        lines += [json.dumps(r) + "\n" for r in records]
    assert "".join(lines).encode() == cold["descriptions.jsonl"]
