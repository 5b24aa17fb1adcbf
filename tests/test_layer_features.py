"""Layer features: every backbone's `layers(wav)`, their per-clip statistics (features=layer_stats),
layer selection, the softmax-weighted layer probe and evaluate.py on them."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_modules.backbones import (ContextEncoderBackbone, ConvFeatureEncoderBackbone, DeepTalkBackbone,
                                         GE2EBackbone)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _speechlike(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    f0 = 100 + 80 * torch.rand(batch, 1, generator=g)
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.1 * env * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(batch, n, generator=g)


@pytest.fixture(scope="module")
def ge2e() -> GE2EBackbone:
    torch.manual_seed(0)
    return GE2EBackbone(pretrained=False).eval()


@pytest.fixture(scope="module")
def deeptalk() -> DeepTalkBackbone:
    torch.manual_seed(0)
    return DeepTalkBackbone().eval()


# ----- layers() of every backbone -----
def test_ge2e_layers_are_mel_and_the_three_lstm_layers(ge2e):
    wav = _speechlike(16000, batch=2)
    layers = ge2e.layers(wav)
    assert ge2e.layer_names() == ["mel", "lstm1", "lstm2", "lstm3"]
    assert [tuple(y.shape) for y in layers] == [(2, 101, 40)] + [(2, 101, 256)] * 3
    assert ge2e.layer_dims() == [40, 256, 256, 256]
    # run layer by layer with the stacked LSTM's weights: the top layer is what frames/embed use
    assert torch.allclose(layers[0], ge2e.mel(ge2e._prepare(wav)))
    assert torch.allclose(layers[-1], ge2e.frames(wav), atol=1e-6)
    assert torch.allclose(ge2e._head(layers[-1][:, -1]), ge2e.embed(wav), atol=1e-6)
    # the middle layers are really the intermediate ones: lstm2 is the second layer of nn.LSTM(num_layers=2)
    two = torch.nn.LSTM(40, 256, 2, batch_first=True)
    two.load_state_dict({k: v for k, v in ge2e.lstm.state_dict().items() if k[-1] in "01"})
    assert torch.allclose(layers[2], two(layers[0])[0], atol=1e-6)


def test_ge2e_layers_carry_gradients(ge2e):
    wav = _speechlike(8000)
    ge2e.lstm.zero_grad()
    sum(y.mean() for y in ge2e.layers(wav)[1:]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ge2e.lstm.parameters())
    ge2e.lstm.zero_grad()


def test_deeptalk_layers_are_filterbank_reference_stages_gru_and_style(deeptalk):
    wav = _speechlike(32000, batch=2)  # 2 s: 199 filterbank frames
    layers = deeptalk.layers(wav)
    names = deeptalk.layer_names()
    assert names == ["filterbank", *(f"ref_conv{i}" for i in range(1, 7)), "gru", "style"]
    assert len(layers) == len(names) == 9
    t, shapes = 199, []
    for channels, freq in zip((32, 32, 64, 64, 128, 128), (20, 10, 5, 3, 2, 1)):
        t = (t - 1) // 2 + 1
        shapes.append((2, t, channels * freq))
    assert [tuple(y.shape) for y in layers] == [(2, 199, 40), *shapes, (2, 4, 128), (2, 1, 256)]
    assert torch.allclose(layers[0], deeptalk.frames(wav))
    assert torch.allclose(layers[-1][:, 0], deeptalk.embed(wav), atol=1e-6)
    assert torch.allclose(layers[-2][:, -1], deeptalk.reference_encoder(layers[0]), atol=1e-6)
    assert deeptalk.layer_dims() == [y.shape[-1] for y in layers]


def test_data2vec_cnn_and_context_encoder_layers():
    torch.manual_seed(0)
    spec = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2  # data2vec's kernels and strides, narrower (fast)
    cnn = ConvFeatureEncoderBackbone(conv_layers=spec).eval()
    wav = _speechlike(16000)
    layers = cnn.layers(wav)
    assert cnn.layer_names() == [f"conv{i}" for i in range(1, 8)]
    assert [y.shape[1] for y in layers] == [3199, 1599, 799, 399, 199, 99, 49] and all(y.shape[2] == 32 for y in layers)
    assert torch.allclose(layers[-1], cnn.frames(wav))
    enc = ContextEncoderBackbone(GE2EBackbone(pretrained=False), dim=32, depth=3, heads=2,
                                 n_extra_tokens=2, conv_pos_depth=2, conv_pos_width=10, conv_pos_groups=4,
                                 dropout=0.0, attention_dropout=0.0).eval()
    layers = enc.layers(wav)
    assert enc.layer_names() == ["block1", "block2", "block3"]
    assert [tuple(y.shape) for y in layers] == [(1, 101, 32)] * 3
    assert torch.allclose(layers[-1], enc.frames(wav))


def test_default_layers_of_a_minimal_backbone_are_its_frames():
    from tests.helpers import TinyBackbone

    b = TinyBackbone().eval()
    wav = _speechlike(16000)
    assert b.layer_names() == ["frames"] and torch.allclose(b.layers(wav)[0], b.frames(wav))


# ----- per-clip statistics of the layers -----
def _hand_stats(layers: list[torch.Tensor]) -> torch.Tensor:
    parts = []
    for y in layers:
        frames = y.reshape(-1, y.shape[-1]).double()
        parts += [frames.mean(0), frames.std(0, unbiased=False)]
    return torch.cat(parts).float()


def test_ge2e_layer_stats_of_a_short_clip_are_the_stats_of_its_layers(ge2e):
    clip = _speechlike(12000)[0]  # shorter than one 1.6 s partial: no padding enters the statistics
    stats, n_short = ge2e.layer_stats_utterances([clip])
    assert n_short == 1 and stats.shape == (1, 2 * (40 + 3 * 256))
    assert torch.allclose(stats[0], _hand_stats(ge2e.layers(clip[None])), rtol=1e-4, atol=1e-5)


def test_ge2e_layer_stats_of_a_long_clip_count_every_frame_of_the_partials_once(ge2e):
    """Frames in the overlap of two partials count once, from the first partial (issue 18: they counted
    twice, so the overlap weighed double in the mean and the std)."""
    clip = _speechlike(40000, seed=3)[0]  # 2.5 s: partials at frames 0 and 77 (the second one padded)
    starts = ge2e.partial_slices(len(clip))
    assert starts == [0, 77]
    mel = ge2e.clip_prefix(clip, "mel").values
    per_partial = [ge2e._layers_from_mel(mel[None, s : s + 160]) for s in starts]
    # partial 0 owns frames 0..159, partial 1 the ones after: 160..236 (its offsets 83..159)
    pooled = [torch.cat([per_partial[0][k][0], per_partial[1][k][0, 83:160]]) for k in range(4)]
    stats, n_short = ge2e.layer_stats_utterances([clip, clip[:8000]])
    assert n_short == 1 and torch.allclose(stats[0], _hand_stats(pooled), rtol=1e-4, atol=1e-5)
    twice = [torch.cat([p[k][0] for p in per_partial]) for k in range(4)]  # the old, double-counting pool
    assert not torch.allclose(stats[0], _hand_stats(twice), rtol=1e-3, atol=1e-4)
    assert torch.allclose(stats[1], _hand_stats(ge2e.layers(clip[None, :8000])), rtol=1e-4, atol=1e-5)


def test_base_layer_stats_use_the_embedding_windows_each_frame_once(deeptalk):
    clip = _speechlike(56000, seed=1)[0]  # 3.5 s: windows of 2 s every 1 s, the last flush with the end
    windows, padded = deeptalk.split_windows(clip)
    assert windows.shape[0] == 3 and not padded
    per_window = [deeptalk.layers(w[None]) for w in windows]
    spans = [(0.0, 1.0), (0.5, 1.0), (0.75, 1.0)]  # window 1 starts at 1 s (its first half is window 0's), 2 at 1.5 s

    def own(y, span):
        t = y.shape[1]
        return y[0] if t == 1 else y[0, round(span[0] * t): round(span[1] * t)]

    pooled = [torch.cat([own(p[k], sp) for p, sp in zip(per_window, spans)]) for k in range(9)]
    short = _speechlike(8000, seed=2)[0]
    stats, n_short = deeptalk.layer_stats_utterances([clip, short])
    assert n_short == 1 and stats.shape[1] == 2 * sum(deeptalk.layer_dims())
    assert torch.allclose(stats[0], _hand_stats(pooled), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats[1], _hand_stats(deeptalk.layers(short[None])), rtol=1e-4, atol=1e-5)


# ----- choosing layers -----
def test_features_layers_select_by_index_name_and_negative_index():
    import numpy as np

    from evaluation.layer_features import layer_columns, layer_stats_description, select_layers

    d = layer_stats_description(["mel", "lstm1", "lstm2", "lstm3"], [2, 3, 3, 3])
    assert layer_columns(d) == [(0, 4), (4, 10), (10, 16), (16, 22)]
    X = np.arange(3 * 22, dtype=np.float32).reshape(3, 22)
    sub, sd = select_layers(X, d, ["lstm3", 1])  # kept in the backbone's order, whatever the order given
    assert [x["name"] for x in sd["layers"]] == ["lstm1", "lstm3"] and sd["dim"] == 12
    assert np.array_equal(sub, np.concatenate([X[:, 4:10], X[:, 16:22]], axis=1))
    assert np.array_equal(select_layers(X, d, [-1])[0], X[:, 16:22])
    assert select_layers(X, d, None)[1]["layers"] == d["layers"]
    with pytest.raises(ValueError, match=r"'lstm4' is not a layer of this backbone; layers \(index: name\): 0: mel"):
        select_layers(X, d, ["lstm4"])
    with pytest.raises(ValueError, match="index 4 is out of range for the 4 layers"):
        select_layers(X, d, [4])
    with pytest.raises(ValueError, match="names a layer twice"):
        select_layers(X, d, [1, "lstm1"])
    with pytest.raises(ValueError, match="make 22 columns, the matrix has 21"):
        select_layers(X[:, :21], d, [0])


def test_layer_stats_clip_output_matches_the_backbone_and_its_description(ge2e):
    from lightning_modules.clip_embedding import describe_output, embed_clips

    clips = [_speechlike(40000, seed=5)[0], _speechlike(9000, seed=6)[0]]
    out = embed_clips(ge2e, clips, "layer_stats")
    stats, n_short = ge2e.layer_stats_utterances(clips)
    assert torch.equal(out.values, stats) and out.n_padded == n_short == 1
    d = describe_output(ge2e, "layer_stats")
    assert [x["name"] for x in d["layers"]] == ["mel", "lstm1", "lstm2", "lstm3"] and d["dim"] == out.values.shape[1]
    assert describe_output(ge2e, "embedding") == {"output": "embedding", "dim": 256}


# ----- the softmax-weighted layer probe -----
def _one_informative_layer(n_speakers: int = 12, per_speaker: int = 24, informative: int = 2, seed: int = 0):
    """Four 'layers' of 8 columns; only layer `informative` carries the label (others: speaker offsets + noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = n_speakers * per_speaker
    y = np.tile(np.arange(per_speaker) % 4, n_speakers)
    speakers = np.repeat(np.arange(n_speakers), per_speaker)
    means = rng.normal(size=(4, 8)) * 1.5
    layers = [rng.normal(size=(n, 8)) + rng.normal(size=(n_speakers, 8))[speakers] for _ in range(4)]
    layers[informative] += means[y]
    return np.concatenate(layers, axis=1), np.array(["angry", "happy", "neutral", "sad"])[y], speakers


def test_weighted_layers_head_weights_sum_to_one_and_move_to_the_informative_layer():
    import numpy as np

    from evaluation.heads import make_head

    X, y, speakers = _one_informative_layer()
    train, test = speakers < 9, speakers >= 9
    head = make_head("weighted_layers", layer_widths=[8, 8, 8, 8], layer_names=["a", "b", "c", "d"])
    head.fit(X[train], y[train])
    w = head.layer_weight_table()
    assert list(w) == ["a", "b", "c", "d"] and sum(w.values()) == pytest.approx(1.0)
    assert max(w, key=w.get) == "c" and w["c"] > 0.5  # from 0.25 each at the start
    assert np.mean(head.predict(X[test]) == y[test]) > 0.6  # 4 classes: chance 0.25
    p = head.predict_proba(X[test])
    assert np.allclose(p.sum(1), 1) and np.array_equal(head.classes_[p.argmax(1)], head.predict(X[test]))
    # the weights follow the label: move it to another layer and they move with it
    X2, y2, _ = _one_informative_layer(informative=0, seed=1)
    w2 = make_head("weighted_layers", layer_widths=[8] * 4).fit(X2, y2).layer_weight_table()
    assert max(w2, key=w2.get) == "layer0"


def test_weighted_layers_head_layer_widths():
    import numpy as np

    from evaluation.heads import make_head

    X, y, _ = _one_informative_layer()
    assert make_head("weighted_layers").fit(X, y).layer_weight_table() == {"layer0": 1.0}  # no boundaries: one layer
    with pytest.raises(ValueError, match=r"layer_widths \[4, 4\] sum to 8 columns, the features have 9"):
        make_head("weighted_layers", layer_widths=[4, 4]).fit(np.zeros((4, 9)), ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="2 layer_names for 1 layer_widths"):
        make_head("weighted_layers", layer_widths=[4], layer_names=["a", "b"])


# ----- evaluate.py and predict.py on layer features -----
@pytest.fixture(scope="module")
def evaluated_layers(tmp_path_factory, synthetic_cache):
    """evaluate.py backbone=ge2e features=layer_stats on the tiny synthetic corpus (the LSTM layers), exporting two heads."""
    pytest.importorskip("resemblyzer", reason="the pretrained GE2E weights come with resemblyzer")
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import make_cfg
    from tests.test_evaluate import EVAL_CORPUS
    from tasks.evaluate import evaluate

    out = tmp_path_factory.mktemp("evaluate_layers")
    cfg = make_cfg("evaluate.yaml", out, EVAL_CORPUS + [
        "backbone=ge2e", "features=layer_stats", "features_layers=[lstm1,lstm2,lstm3]", "eval.n_folds=2", "eval.repeats=1",
        "eval.heads=[svm,sad_first,linear,detection,weighted_layers]", "eval.export.heads=[weighted_layers,linear]",
        "eval.verification_analysis=false"], synthetic_cache)
    results = evaluate(cfg)
    from datamodules.speaker_datamodule import load_corpus_records

    h = cfg.data
    records = load_corpus_records(h.corpus, h.root, str(synthetic_cache / "manifests"), dict(h.corpus_options))
    GlobalHydra.instance().clear()
    return out, results, synthetic_cache, {r.utt_id: r.path for r in records}


def test_evaluate_layer_stats_writes_metrics_with_every_head(evaluated_layers):
    import json

    import numpy as np

    from evaluation.embeddings_io import load_npz

    out, results, _, _ = evaluated_layers
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"svm", "sad_first", "linear", "detection", "weighted_layers"} <= set(metrics)
    features = metrics["protocol"]["features"]
    assert features["output"] == "layer_stats" and [x["name"] for x in features["layers"]] == ["lstm1", "lstm2", "lstm3"]
    assert [x["name"] for x in features["backbone_layers"]] == ["mel", "lstm1", "lstm2", "lstm3"]
    assert features["dim"] == 2 * 3 * 256 == metrics["protocol"]["embedding_dim"]
    # the SVM heads standardise layer statistics (per fold, inside their pipeline) with gamma="scale"
    assert metrics["protocol"]["head_kwargs"]["svm"]["standardize"] is True
    assert metrics["protocol"]["head_kwargs"]["sad_first"]["svm"]["gamma"] == "scale"
    assert features["heads_standardized"]["svm"] is True
    weights = metrics["weighted_layers"]["layer_weights"]["mean"]
    assert list(weights) == ["lstm1", "lstm2", "lstm3"] and sum(weights.values()) == pytest.approx(1.0)
    assert all(set(f["layer_weights"]) == set(weights) for f in metrics["weighted_layers"]["folds"])
    emb = load_npz(out / "embeddings.npz")  # every layer is extracted; what the columns are travels with them
    assert emb.features["output"] == "layer_stats" and emb.embeddings.shape[1] == 2 * (40 + 3 * 256)
    assert [x["name"] for x in emb.features["layers"]] == ["mel", "lstm1", "lstm2", "lstm3"]
    assert np.isfinite(emb.embeddings).all()


def test_refit_from_npz_with_a_subset_of_layers_and_clear_errors(evaluated_layers, tmp_path):
    import json

    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import make_cfg
    from tests.test_evaluate import EVAL_CORPUS
    from common.errors import ConfigError
    from tasks.evaluate import evaluate

    out, _, cache, _ = evaluated_layers

    def cfg(d, *o):
        return make_cfg("evaluate.yaml", tmp_path / d, EVAL_CORPUS + [
            f"embeddings={out / 'embeddings.npz'}", "eval.n_folds=2", "eval.repeats=1", "eval.verification_analysis=false",
            *o], cache)

    res = evaluate(cfg("sub", "features=layer_stats", "features_layers=[lstm1,-1]", "eval.heads=[linear,weighted_layers]"))
    GlobalHydra.instance().clear()
    assert [x["name"] for x in res["protocol"]["features"]["layers"]] == ["lstm1", "lstm3"]
    assert res["protocol"]["embedding_dim"] == 4 * 256
    assert list(res["weighted_layers"]["layer_weights"]["mean"]) == ["lstm1", "lstm3"]
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text())["protocol"]["features"]["dim"] == 1024
    with pytest.raises(ConfigError, match=r"holds features 'layer_stats' but features=embedding: pass features=layer_stats"):
        evaluate(cfg("e1", "eval.heads=[linear]"))
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="\['weighted_layers'\], which cannot be fitted on features=embedding.*layer_stats"):
        evaluate(cfg("e2", "eval.heads=[weighted_layers]"))
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="features_layers=.* selects layers of features=layer_stats"):
        evaluate(cfg("e3", "features_layers=[1]", "eval.heads=[linear]"))
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="'lstm9' is not a layer"):
        evaluate(cfg("e4", "features=layer_stats", "features_layers=[lstm9]", "eval.heads=[linear]"))
    GlobalHydra.instance().clear()


def test_predict_applies_the_exported_layer_stats_bundle_like_evaluate(evaluated_layers, tmp_path):
    import csv
    import shutil

    import numpy as np
    from hydra.core.global_hydra import GlobalHydra

    from evaluation.embeddings_io import load_npz
    from evaluation.head_bundle import load_head, read_spec
    from tests.conftest import make_cfg
    from tasks.predict import predict

    out, _, _, records = evaluated_layers
    spec = read_spec(out / "model")
    assert spec["features"]["output"] == "layer_stats" and spec["default_head"] == "weighted_layers"
    emb = load_npz(out / "embeddings.npz")
    folder = tmp_path / "clips"
    folder.mkdir()
    chosen = sorted(emb.utt_id.tolist())[:4]
    for u in chosen:
        shutil.copy(records[u], folder / f"{u}{Path(records[u]).suffix}")
    cfg = make_cfg("predict.yaml", tmp_path / "pred", [f"ckpt_path={out / 'model'}", f"inputs={folder}"])
    predict(cfg)
    GlobalHydra.instance().clear()
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).stem: r for r in csv.DictReader(f)}
    head = load_head(out / "model", spec, "weighted_layers")
    idx = [emb.utt_id.tolist().index(u) for u in chosen]
    from evaluation.layer_features import select_layers

    expected = head.predict_proba(select_layers(emb.embeddings[idx], emb.features, ["lstm1", "lstm2", "lstm3"])[0])
    got = np.array([[float(rows[u][f"p_{c}"]) for c in head.classes_] for u in chosen])
    assert all(rows[u]["status"] == "ok" for u in chosen)
    assert np.allclose(got, expected, atol=2e-3)


def test_a_bundle_whose_encoder_lost_the_recorded_layers_is_refused(evaluated_layers, tmp_path):
    import json
    import shutil

    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import make_cfg
    from common.errors import ConfigError
    from tasks.predict import load_model

    out, _, _, _ = evaluated_layers
    bundle = tmp_path / "model"
    shutil.copytree(out / "model", bundle)
    spec = json.loads((bundle / "bundle.json").read_text())
    spec["features"]["backbone_layers"][0]["dim"] = 41  # as if the encoder's mel had another width
    (bundle / "bundle.json").write_text(json.dumps(spec))
    cfg = make_cfg("predict.yaml", tmp_path / "pred", [f"ckpt_path={bundle}", f"inputs={tmp_path}"])
    with pytest.raises(ConfigError, match=r"fitted on layer statistics of layers \[\('mel', 41\).*re-export"):
        load_model(cfg)
    GlobalHydra.instance().clear()


def test_npz_keeps_the_feature_description_and_checks_it(tmp_path):
    import numpy as np

    from evaluation.embeddings_io import load_npz, save_npz, synthetic_set
    from evaluation.layer_features import layer_stats_description

    s = synthetic_set(n_speakers=3, clips_per_speaker=4, dim=10)
    s.features = layer_stats_description(["a", "b"], [2, 3])
    save_npz(s, tmp_path / "e.npz")
    back = load_npz(tmp_path / "e.npz")
    assert back.features == s.features and back.subset(np.arange(3)).features == s.features
    s.features = layer_stats_description(["a", "b"], [2, 4])
    with pytest.raises(ValueError, match=r"layers \['a', 'b'\] make 12 columns, the matrix has 10"):
        save_npz(s, tmp_path / "bad.npz")


def test_unknown_features_value_is_a_clear_error(tmp_path, synthetic_cache):
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import make_cfg
    from tests.test_evaluate import EVAL_CORPUS
    from common.errors import ConfigError
    from tasks.evaluate import evaluate

    cfg = make_cfg("evaluate.yaml", tmp_path, EVAL_CORPUS + ["backbone=ge2e", "features=layers"], synthetic_cache)
    with pytest.raises(ConfigError, match=r"features='layers': expected one of \['auto', 'embedding', 'layer_stats'\]"):
        evaluate(cfg)
    GlobalHydra.instance().clear()


def test_evaluate_features_auto_records_the_pick_of_every_fold_and_exports_it(tmp_path, synthetic_cache):
    """features=auto: the embedding and every layer's statistics are extracted; each fold's pick (made on its
    training speakers) is in metrics.json, and the exported model predicts with it."""
    pytest.importorskip("resemblyzer", reason="the pretrained GE2E weights come with resemblyzer")
    import json

    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import make_cfg
    from tests.test_evaluate import EVAL_CORPUS
    from tasks.evaluate import evaluate

    cfg = make_cfg("evaluate.yaml", tmp_path, EVAL_CORPUS + [
        "backbone=ge2e", "features=auto", "eval.n_folds=2", "eval.repeats=1", "eval.auto.inner_folds=2",
        "eval.export.heads=[auto]", "eval.heads=[auto]", "eval.verification_analysis=false"], synthetic_cache)
    results = evaluate(cfg)
    GlobalHydra.instance().clear()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(k for k in metrics if k not in ("protocol", "data", "model")) == ["auto"]
    f = metrics["protocol"]["features"]
    assert f["output"] == "auto" and f["embedding_dim"] == 256 and f["dim"] == 256 + 2 * (40 + 3 * 256)
    folds = metrics["auto"]["folds"]
    assert len(folds) == 2 and all(fold["best_params"]["pick"] and 0 <= fold["best_params"]["inner_ua"] <= 1
                                   for fold in folds)
    assert sum(metrics["auto"]["picks"].values()) == 2
    assert results["model"] and (tmp_path / "model").is_dir()
