"""The decision layer: features, where it applies, fitting, the checkpoint it travels in, the worker that serves it,
and the replay of recorded sessions it is fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from magtkd_stream.labels import MELD_LABELS
from magtkd_stream.model.decision import DecisionLayer, decision_features, feature_width, presence_pattern
from magtkd_stream.names import MODALITIES

C = len(MELD_LABELS)
DIMS = {"text": 8, "audio": 6, "video": 4}


def _onehotish(k: int, p: float = 0.7) -> np.ndarray:
    v = np.full(C, (1 - p) / (C - 1))
    v[k] = p
    return v


def test_features_lay_out_fused_then_each_modality_with_its_flag() -> None:
    fused = _onehotish(0)
    x = decision_features(fused, {"text": None, "audio": _onehotish(3), "video": None})
    assert x.shape == (feature_width(C),)
    assert np.allclose(x[:C], np.log(fused))
    text, audio, video = (x[C + k * (C + 1): C + (k + 1) * (C + 1)] for k in range(3))
    assert not text.any() and not video.any()
    assert audio[-1] == 1.0 and np.argmax(audio[:-1]) == 3
    assert presence_pattern({"text": False, "audio": True, "video": True}) == "-av"


def test_the_layer_applies_only_to_fitted_patterns() -> None:
    w = np.zeros((C, feature_width(C)))
    audio_block = C + 1 * (C + 1)
    w[np.arange(C), audio_block + np.arange(C)] = 5.0  # follow the audio head
    layer = DecisionLayer(w, np.zeros(C), frozenset({"tav"}))
    fused = _onehotish(0)
    heads = {"text": _onehotish(0), "audio": _onehotish(5), "video": _onehotish(1)}
    out = layer(fused, heads)
    assert out.argmax() == 5 and out.sum() == pytest.approx(1.0)
    no_face = {**heads, "video": None}
    assert np.array_equal(layer(fused, no_face), fused)  # "ta-" never fitted: MAGT's own
    with pytest.raises(ValueError, match=r"\(7, 31\)"):
        DecisionLayer(np.zeros((C, 3)), np.zeros(C))


def _rows(n: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Rows where MAGT is right 40 % of the time and the audio head 90 %: a fit must learn to follow audio."""
    from training.stage2.decision import Rows

    y = rng.integers(0, C, n)
    xs, magts = [], []
    for t in y:
        magt = _onehotish(int(t) if rng.random() < 0.4 else int(rng.integers(0, C)), 0.5)
        audio = _onehotish(int(t) if rng.random() < 0.9 else int(rng.integers(0, C)), 0.4)
        xs.append(decision_features(magt, {"text": _onehotish(4, 0.3), "audio": audio, "video": None}))
        magts.append(magt)
    return Rows(np.stack(xs), y, np.stack(magts), ["ta-"] * n, ["voice"] * n)


def test_a_fit_learns_which_source_to_believe_and_is_chosen_on_dev() -> None:
    from training.stage2.decision import fit_decision, layer_probs

    rng = np.random.default_rng(0)
    train, dev = _rows(600, rng), _rows(200, rng)
    layer = fit_decision(train, dev, C)
    assert layer.patterns == frozenset({"ta-"})
    acc = float((layer_probs(layer, dev).argmax(1) == dev.y).mean())
    magt_acc = float((dev.magt.argmax(1) == dev.y).mean())
    assert acc > magt_acc + 0.3, (acc, magt_acc)
    assert layer.info["dev"]["decision"]["accuracy"] == pytest.approx(acc, abs=1e-4)
    assert layer.info["temperature"] > 0 and len(layer.info["grid"]) == 12
    with pytest.raises(ValueError, match="50 training rows"):
        fit_decision(train.select(np.arange(len(train)) < 20), dev, C)


def test_a_fit_that_falls_back_to_neutral_is_not_chosen() -> None:
    """Neutral is the most frequent class and most rows carry no evidence: the most accurate fit answers neutral
    for all of those, which the product must not do; a class-balanced fit that does not is chosen instead."""
    from training.stage2.decision import NEUTRAL_RATIO, Rows, fit_decision

    rng = np.random.default_rng(3)
    flat = np.full(C, 1.0 / C)

    def rows(n: int) -> Rows:
        y = np.where(rng.random(n) < 0.3, 4, rng.choice([0, 1, 2, 3, 5, 6], n))
        audio = [_onehotish(int(t), 0.6) if rng.random() < 0.4 else flat for t in y]
        x = np.stack([decision_features(flat, {"text": None, "audio": a, "video": None}) for a in audio])
        return Rows(x, y, np.tile(flat, (n, 1)), ["-a-"] * n, ["voice"] * n)

    layer = fit_decision(rows(1400), rows(600), C, neutral=4)
    grid = layer.info["grid"]
    chosen = next(t for t in grid if t["C"] == layer.info["chosen"]["C"]
                  and t["class_weight"] == layer.info["chosen"]["class_weight"])
    best = max(grid, key=lambda t: (t["accuracy"], t["macro_f1"]))
    assert best["neutral_predicted"] > NEUTRAL_RATIO * best["neutral_true"], "the most accurate fit must be ruled out"
    assert chosen["neutral_predicted"] <= NEUTRAL_RATIO * chosen["neutral_true"]


def _tiny_checkpoint(path: Path) -> Path:
    from magtkd_stream.config import load_config
    from magtkd_stream.model.checkpoint import save_checkpoint
    from magtkd_stream.model.fusion import FusionModel

    import torch

    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = FusionModel(cfg, DIMS, C)
    modules = {"magt": model.magt, **{f"{m}.head": h for m, h in model.heads.items()}}
    return save_checkpoint(path, modules, cfg, MELD_LABELS, extra={"encoder_dims": DIMS})


def _audio_layer() -> DecisionLayer:
    w = np.zeros((C, feature_width(C)))
    w[np.arange(C), C + (C + 1) + np.arange(C)] = 8.0
    return DecisionLayer(w, np.zeros(C), frozenset({"tav", "ta-"}), {"fitted_on": 1})


def test_the_extended_checkpoint_is_served_by_the_fusion_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from magtkd_stream.streaming.workers import FusionWorker
    from training.stage2.decision import extend_checkpoint

    base = _tiny_checkpoint(tmp_path / "base.safetensors")
    ext = extend_checkpoint(base, _audio_layer(), tmp_path / "ext.safetensors")
    cfg_dims = dict(DIMS)
    from magtkd_stream.model.checkpoint import load_checkpoint

    cfg = load_checkpoint(base).config
    plain = FusionWorker(cfg, cfg_dims, checkpoint=str(base))
    with_layer = FusionWorker(cfg, cfg_dims, checkpoint=str(ext))
    assert plain.model.decision is None and with_layer.model.decision is not None
    assert with_layer.model.decision.info == {"fitted_on": 1}
    rng = np.random.default_rng(1)
    for k in range(4):
        vecs = {m: rng.normal(size=d).astype(np.float32) for m, d in DIMS.items()}
        if k == 2:
            vecs["text"] = None  # "-av": not a fitted pattern
        a = plain.fuse_batch([("s", "A", vecs, True)])[0]
        b = with_layer.fuse_batch([("s", "A", vecs, True)])[0]
        assert a["magt"] == pytest.approx(b["magt"]) and a["modalities"] == b["modalities"]
        assert a["probs"] == pytest.approx(a["magt"])  # no layer: MAGT's output is final
        if k == 2:
            assert b["probs"] == pytest.approx(b["magt"])
        else:
            audio = b["modalities"]["audio"]
            assert max(b["probs"], key=b["probs"].get) == max(audio, key=audio.get)


def test_replaying_recorded_vectors_reproduces_what_the_service_fused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The rows the layer is fitted on are the service's own outputs for the recorded session, in order."""
    from magtkd_stream.model.checkpoint import load_checkpoint, model_id
    from magtkd_stream.streaming.vector_tap import SessionVectors, save_vectors
    from magtkd_stream.streaming.workers import FusionWorker
    from training.stage2.decision import replay_worker, served_rows

    base = _tiny_checkpoint(tmp_path / "base.safetensors")
    cfg = load_checkpoint(base).config
    rng = np.random.default_rng(2)
    n = 5
    vectors = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in DIMS.items()}
    present = {m: np.ones(n, bool) for m in MODALITIES}
    present["video"][1] = False
    speakers = ["A", "B", "A", "B", "A"]
    live = FusionWorker(cfg, dict(DIMS), checkpoint=str(base))  # what the service published, utterance by utterance
    served = [live.fuse_batch([("live", speakers[j], {m: vectors[m][j] if present[m][j] else None
                                                     for m in MODALITIES}, True)])[0] for j in range(n)]
    starts = np.arange(n) * 3.0
    composed, run = tmp_path / "composed", tmp_path / "served"
    utterances = [{"index": j, "speaker": speakers[j], "start": float(starts[j]), "end": float(starts[j] + 2),
                   "emotion": MELD_LABELS[j % C], "cue_type": "voice"} for j in range(n)]
    utterances[3]["end"] = utterances[3]["start"] + 0.01  # too short to match: that event is context only
    composed.mkdir()
    (composed / "conv-000.json").write_text(json.dumps({"id": "conv-000", "utterances": utterances}))
    (composed / "manifest.json").write_text(json.dumps({"conversations": [{"script": "conv-000.json"}]}))
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"dev": str(composed), "split": "train"}))
    digest = model_id(str(base), cfg.profile).rsplit("@", 1)[1]
    sv = SessionVectors(np.arange(n), starts, starts + 2, speakers, [""] * n, vectors, present)
    save_vectors(run / "vectors" / "conv-000.npz", sv, model=f"lite@{digest}")
    rows = served_rows(run, replay_worker(base), digest)
    kept = [0, 1, 2, 4]
    assert rows.y.tolist() == [MELD_LABELS.index(MELD_LABELS[j % C]) for j in kept]
    assert rows.patterns == ["tav", "ta-", "tav", "tav"]
    for r, j in enumerate(kept):
        assert rows.magt[r] == pytest.approx([served[j]["magt"][k] for k in MELD_LABELS], abs=1e-6)
    with pytest.raises(ValueError, match="not by the checkpoint"):
        served_rows(run, replay_worker(base), "0" * 12)
