"""data=pooled keeps the speakers of its corpora apart; protocol=cross_corpus trains on one corpus, tests on another."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from evaluation.embeddings_io import EmbeddingSet
from evaluation.protocols import plan_folds
from tests.conftest import make_cfg
from tests.fixtures_corpora import build_casia, write_wav

EMODB_LETTERS = {"angry": "W", "happy": "F", "neutral": "N", "sad": "T"}


def build_emodb(root: Path, speakers=("03", "08", "09"), texts=("a01", "a02")) -> Path:
    for s, spk in enumerate(speakers):
        for e, letter in enumerate(EMODB_LETTERS.values()):
            for t, text in enumerate(texts):
                write_wav(root / "wav" / f"{spk}{text}{letter}a.wav", n=16000, seed=1000 * s + 10 * e + t)
    return root


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pool")
    return {"emodb": build_emodb(base / "emodb"),
            "casia": build_casia(base / "casia", ["liuchanhg", "wangzhe"], emotions=("angry", "happy", "neutral", "sad"))}


def _pool_override(roots: dict[str, Path], extra: str = "") -> str:
    members = ", ".join(f"{{corpus: {c}, root: '{r}'}}" for c, r in roots.items())
    return f"data.corpus_options.corpora=[{members}{extra}]"


def test_pooled_datamodule_keeps_corpora_apart(two_corpora, tmp_path):
    cfg = make_cfg("train.yaml", tmp_path, ["data=pooled", _pool_override(two_corpora), "data.val_speakers=0",
                                            "data.n_speakers=2", "data.n_per_speaker=2", "data.num_workers=0"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    by_corpus = {}
    for r in dm.train_records:
        by_corpus.setdefault(r.speaker.split(":")[0], set()).add(r.speaker)
    assert {c: len(s) for c, s in by_corpus.items()} == {"emodb": 3, "casia": 2}
    assert len(dm.speakers) == 5  # five distinct speaker labels, none merged across corpora
    assert sum(r.speaker.startswith("emodb:") for r in dm.train_records) == 3 * 4 * 2
    seen = dm.seen_speakers()
    assert set(seen["corpora"]) == {"emodb", "casia"} and len(seen["speakers"]) == 5


def test_pool_members_are_checked(two_corpora, tmp_path):
    from datamodules.pooled import pool_members

    with pytest.raises(ValueError, match="more than once"):
        pool_members({"corpora": [{"corpus": "emodb", "root": str(two_corpora["emodb"])}] * 2})
    with pytest.raises(FileNotFoundError, match=r"corpora\[1\]\.root"):
        pool_members({"corpora": [{"corpus": "emodb", "root": str(two_corpora["emodb"])},
                                  {"corpus": "casia", "root": str(tmp_path / "nowhere")}]})
    with pytest.raises(ValueError, match="needs data.corpus_options.corpora"):
        pool_members({"corpora": []})


def _set(speakers: list[str]) -> EmbeddingSet:
    n = len(speakers)
    rng = np.random.default_rng(0)
    emotions = np.array(["angry", "sad"] * (n // 2))
    return EmbeddingSet(rng.standard_normal((n, 4)).astype(np.float32), emotions, np.array(speakers),
                        utt_id=np.array([f"u{i}" for i in range(n)]))


def test_cross_corpus_protocol_trains_on_one_corpus_and_tests_on_another():
    speakers = ["emodb:03"] * 4 + ["emodb:08"] * 4 + ["ased:1"] * 4 + ["casia:wangzhe"] * 4
    es = _set(speakers)
    plan = plan_folds(es, "cross_corpus", cross_corpus={"train": ["emodb"], "test": ["ased"]})
    (fold,) = plan.folds
    assert set(es.speaker[fold.train_idx]) == {"emodb:03", "emodb:08"}
    assert set(es.speaker[fold.test_idx]) == {"ased:1"}  # casia in neither part
    assert fold.name == "emodb->ased"
    with pytest.raises(ValueError, match="not in the evaluated set"):
        plan_folds(es, "cross_corpus", cross_corpus={"train": ["emodb"], "test": ["iemocap"]})
    with pytest.raises(ValueError, match="both trains and tests"):
        plan_folds(es, "cross_corpus", cross_corpus={"train": ["emodb"], "test": ["emodb"]})
    with pytest.raises(ValueError, match="needs eval.cross_corpus"):
        plan_folds(es, "cross_corpus")


def test_evaluate_cross_corpus_on_a_pool(two_corpora, tmp_path):
    from tasks.evaluate import evaluate

    cfg = make_cfg("evaluate.yaml", tmp_path, [
        "data=pooled", _pool_override(two_corpora), "backbone=ge2e", "eval.protocol=cross_corpus",
        "eval.cross_corpus.train=[emodb]", "eval.cross_corpus.test=[casia]", "eval.heads=[linear]",
        "eval.export.heads=[]", "eval.verification_analysis=false", "data.num_workers=0"])
    evaluate(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "cross_corpus"
    (fold,) = metrics["protocol"]["folds"]
    assert fold["name"] == "emodb->casia" and all(s.startswith("casia:") for s in fold["test_speakers"])
    assert len(metrics["linear"]["folds"]) == 1 and 0.0 <= metrics["linear"]["ua"] <= 1.0
    assert metrics["data"]["corpus"] == "pooled"
    assert {m["corpus"] for m in metrics["data"]["members"]} == {"emodb", "casia"}
