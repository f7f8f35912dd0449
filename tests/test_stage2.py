"""Stage 2 on tiny synthetic features: the features file, batching, training, selection, resume, streaming parity.

The synthetic dialogues carry their label only in the distilled audio features
(a class-dependent mean); plain audio, text and video are noise, text is absent
for some utterances and a second source has no text at all. So a model beats
chance only if it reads the right feature kind and masks absent modalities.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import training.stage2.train as stage2
from magtkd_stream.model.checkpoint import load_checkpoint
from magtkd_stream.config import Config, load_config
from magtkd_stream.encoders.base import ModalityHead
from magtkd_stream.model.fusion import FusionModel, SessionWindow
from magtkd_stream.labels import MELD_LABELS
from magtkd_stream.model.magt import MAGT
from training.stage2.features import (
    IGNORE_LABEL,
    DialogueFeatures,
    FeatureFileError,
    choose_feature_kinds,
    collate_features,
    features_path,
    load_features,
    load_heads,
    save_features,
    speaker_ids,
)
from training.runs import RunFolder
from training.stage2.evaluate import evaluate_stage2
from training.stage2.train import train_stage2


DIM = 32
C = len(MELD_LABELS)
ENC_DIMS = {"text": 20, "audio": 24, "video": 16}
WINDOW = 4
EPOCHS = 5
SCALE = 3.0


def make_dialogues(n: int, split: str, seed: int, invert: bool = False) -> list[DialogueFeatures]:
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1234).normal(size=(C, DIM)).astype(np.float32) * SCALE
    out = []
    for k in range(n):
        source = "meld" if k % 3 else "ravdess"
        L = int(rng.integers(3, 9))
        y = rng.integers(0, C, size=L)
        names = rng.choice(["ann", "bob", "cy"], size=L).tolist()
        labels = (C - 1 - y) if invert else y.copy()
        labels[rng.random(L) < 0.1] = IGNORE_LABEL
        noise = lambda: rng.normal(size=(L, DIM)).astype(np.float32)  # noqa: E731
        feats = {"audio": noise(), "audio_kd": means[y] + noise(), "video": noise(), "video_kd": noise()}
        text_present = np.zeros(L, bool)
        if source == "meld":
            feats["text"] = noise()
            text_present = rng.random(L) < 0.6
        out.append(
            DialogueFeatures(
                did=f"{split}{k}", split=split, source=source,
                uids=[f"{source}/{split}/d{k}_u{i}" for i in range(L)],
                speakers=speaker_ids(names, 16), labels=labels.astype(np.int64), feats=feats,
                present={"text": text_present, "audio": np.ones(L, bool), "video": rng.random(L) < 0.7},
            )
        )
    return out


def make_heads(seed: int = 0) -> dict[str, ModalityHead]:
    torch.manual_seed(seed)
    kinds = {"text": "text", "audio": "audio", "audio_kd": "audio", "video": "video", "video_kd": "video"}
    return {k: ModalityHead(ENC_DIMS[m], DIM, C) for k, m in kinds.items()}


def write_features(folder: Path, with_test: bool = True) -> Path:
    meta = {"labels": list(MELD_LABELS), "feature_dim": DIM, "encoder_dims": ENC_DIMS, "profile": "tiny"}
    heads = make_heads()
    save_features(features_path(folder, "train"), make_dialogues(48, "train", 1), meta, heads=heads)
    save_features(features_path(folder, "dev"), make_dialogues(16, "dev", 2), meta, heads=heads)
    if with_test:  # inverted labels: a selection that peeked at test would pick a different epoch
        save_features(features_path(folder, "test"), make_dialogues(16, "test", 2, invert=True), meta, heads=heads)
    return folder


def tiny_config(**stage2_kw) -> Config:
    cfg = load_config("tiny", ["magt.dropout=0.1", f"magt.window={WINDOW}", "kd.distill_video=false",
                               "kd.lambda_audio=0.3", "kd.lambda_video=0.1"])
    s2 = dict(epochs=EPOCHS, batch_size=8, lr=1e-2, warmup_ratio=0.1, windows=[0, 2, WINDOW], device="cpu")
    s2.update(stage2_kw)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, stage2=dataclasses.replace(cfg.train.stage2, **s2)))


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_features(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def trained(features: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunFolder, dict]:
    run = RunFolder(tmp_path_factory.mktemp("runs") / "a")
    return run, train_stage2(tiny_config(), features, run)


# ------------------------------------------------------------------ features file
def test_features_round_trip_is_exact(tmp_path: Path) -> None:
    dialogues = make_dialogues(5, "dev", 7)
    del dialogues[1].feats["video_kd"]  # a dialogue may lack a kind altogether
    meta = {"labels": list(MELD_LABELS), "feature_dim": DIM, "encoder_dims": ENC_DIMS, "config": {"x": [1, 2]}}
    heads = make_heads(3)
    path = save_features(tmp_path / "dev.safetensors", dialogues, meta, heads={"audio_kd": heads["audio_kd"]})
    loaded, meta2 = load_features(path)
    assert meta2 == meta
    assert len(loaded) == len(dialogues)
    for a, b in zip(dialogues, loaded):
        assert (a.did, a.split, a.source, a.uids) == (b.did, b.split, b.source, b.uids)
        assert np.array_equal(a.speakers, b.speakers) and b.speakers.dtype == np.int64
        assert np.array_equal(a.labels, b.labels) and b.labels.dtype == np.int64
        assert sorted(a.feats) == sorted(b.feats)
        for k in a.feats:
            assert b.feats[k].dtype == np.float32 and np.array_equal(a.feats[k], b.feats[k])
        for m in a.present:
            assert b.present[m].dtype == np.bool_ and np.array_equal(a.present[m], b.present[m])
    stored = load_heads(path)
    assert list(stored) == ["audio_kd"]
    assert torch.equal(stored["audio_kd"]["proj.weight"], heads["audio_kd"].proj.weight)


def test_features_bad_input_is_named(tmp_path: Path) -> None:
    d = make_dialogues(1, "dev", 0)[0]
    meta = {"labels": list(MELD_LABELS), "feature_dim": DIM + 1}
    with pytest.raises(FeatureFileError, match=r"audio.*width 32"):
        save_features(tmp_path / "x.safetensors", [d], meta)
    with pytest.raises(FeatureFileError, match="feature_dim"):
        save_features(tmp_path / "x.safetensors", [d], {"labels": list(MELD_LABELS)})
    d.present["video"][:] = True
    del d.feats["video"], d.feats["video_kd"]
    with pytest.raises(FeatureFileError, match="video is marked present"):
        d.validate()
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_features(tmp_path / "missing.safetensors")


def test_speaker_ids_follow_first_appearance_and_wrap() -> None:
    assert speaker_ids(["b", "a", "b", "c", "a"], 16).tolist() == [0, 1, 0, 2, 1]
    assert speaker_ids(["a", "b", "c", "a"], 2).tolist() == [0, 1, 0, 0]


def test_collate_pads_masks_and_picks_kinds() -> None:
    with_text = sorted((d for d in make_dialogues(12, "train", 5) if d.source == "meld"), key=len)
    short, long_ = with_text[0], with_text[-1]
    assert len(short) < len(long_)
    kinds = choose_feature_kinds([short, long_], load_config("tiny").kd)
    assert kinds == {"text": "text", "audio": "audio_kd", "video": "video_kd"}
    no_kd_video = dataclasses.replace(load_config("tiny").kd, distill_video=False)
    assert choose_feature_kinds([short], no_kd_video)["video"] == "video"
    b = collate_features([short, long_], kinds, DIM)
    n, L = len(short), len(long_)
    assert b["text"].shape == b["audio"].shape == b["video"].shape == (2, L, DIM)
    assert b["pad_mask"][0].tolist() == [True] * n + [False] * (L - n) and bool(b["pad_mask"][1].all())
    assert not b["modality_mask"][0, n:].any()
    assert b["modality_mask"][0, :n, 0].numpy().tolist() == short.present["text"].tolist()
    assert torch.equal(b["audio"][0, :n], torch.from_numpy(short.feats["audio_kd"]))
    assert torch.equal(b["video"][1], torch.from_numpy(long_.feats["video_kd"]))
    assert not b["text"][0, n:].any() and (b["labels"][0, n:] == IGNORE_LABEL).all()
    assert b["labels"][0, :n].tolist() == short.labels.tolist()
    assert b["speakers"][1].tolist() == long_.speakers.tolist()
    del short.feats["audio_kd"]  # present audio, but not the kind the others use
    with pytest.raises(FeatureFileError, match="audio_kd"):
        collate_features([short, long_], kinds, DIM)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_unlabelled_batch_leaves_model_unchanged_and_finite() -> None:
    cfg = tiny_config()
    dialogues = make_dialogues(3, "train", 9)
    for d in dialogues:
        d.labels[:] = IGNORE_LABEL
    model = MAGT(cfg.magt, DIM, C)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    kinds = choose_feature_kinds(dialogues, cfg.kd)
    loader = [collate_features(dialogues, kinds, DIM)]
    losses = stage2._train_one_epoch(model, loader, opt, sched, cfg, WINDOW, torch.device("cpu"), 0)
    assert all(math.isfinite(v) for v in losses.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------- training
def test_stage2_learns_and_writes_the_run_folder(trained: tuple[RunFolder, dict]) -> None:
    run, summary = trained
    dev = run.load_metrics("dev")["windows"]
    assert dev[str(WINDOW)]["accuracy"] > 0.5  # chance is 1/7
    assert set(dev) == {"0", "2", str(WINDOW)}
    assert summary["dev"][str(WINDOW)]["weighted_f1"] == pytest.approx(dev[str(WINDOW)]["weighted_f1"])
    assert set(dev[str(WINDOW)]["by_source"]) == {"meld", "ravdess"}
    for name in ("config.yaml", "run.json", "metrics/history.json", "metrics/metrics.json", "metrics/test.json",
                 "figures/dev_w4.png", "figures/test_w0.png", "figures/test_w4.png", "figures/stage2-curves.png",
                 "checkpoints/last-stage2.pt"):
        assert (run.path / name).is_file(), name
    assert run.read_config().magt.window == WINDOW
    assert (run.path / "figures/dev_w0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = run.load_metrics("history")["epochs"]
    assert len(history) == EPOCHS and all(math.isfinite(h["train"]["total"]) for h in history)


def test_selection_uses_dev_only(features: Path, trained: tuple[RunFolder, dict], tmp_path: Path) -> None:
    run, summary = trained
    history = run.load_metrics("history")["epochs"]
    dev_scores = [h["dev"]["weighted_f1"] for h in history]
    assert summary["best_epoch"] == int(np.argmax(dev_scores))
    assert summary["test"][str(WINDOW)]["accuracy"] < 0.3  # inverted test labels: low, and never looked at
    no_test = write_features(tmp_path / "f", with_test=False)
    run_b = RunFolder(tmp_path / "b")
    heads = make_heads()
    summary_b = train_stage2(tiny_config(), no_test, run_b,
                             heads={"text": heads["text"], "audio": heads["audio_kd"], "video": heads["video"]})
    assert summary_b["test"] == {} and not run_b.metrics_path("test").exists()
    assert summary_b["best_epoch"] == summary["best_epoch"]
    assert [h["dev"] for h in run_b.load_metrics("history")["epochs"]] == [h["dev"] for h in history]
    assert summary_b["dev"] == summary["dev"]


def test_checkpoint_streams_like_the_causal_window(trained: tuple[RunFolder, dict], features: Path) -> None:
    run, _ = trained
    ck = load_checkpoint(run.best_checkpoint())
    assert ck.extra["window"] == WINDOW and ck.extra["feature_kinds"]["audio"] == "audio_kd"
    assert ck.extra["feature_kinds"]["video"] == "video"  # kd.distill_video is off
    heads = load_heads(features_path(features, "train"))
    assert torch.equal(ck.tensors["audio.head.proj.weight"], heads["audio_kd"]["proj.weight"])
    assert torch.equal(ck.tensors["video.head.proj.weight"], heads["video"]["proj.weight"])
    fusion = FusionModel.from_checkpoint(ck)
    magt = MAGT(ck.config.magt, DIM, C).eval()
    magt.load_state_dict(ck.state_dict("magt"))
    dev, _ = load_features(features_path(features, "dev"))
    dialogue = next(d for d in dev if len(d) > WINDOW + 1)
    kinds = ck.extra["feature_kinds"]
    session = SessionWindow(WINDOW, ck.config.magt.max_speakers)
    for i in range(len(dialogue)):
        session.push(str(dialogue.speakers[i]), {
            m: dialogue.feats[kinds[m]][i] if dialogue.present[m][i] else None for m in ("text", "audio", "video")
        })
    streamed = fusion.predict_last([session])[0]
    batch = collate_features([dialogue], kinds, DIM)
    batch.pop("labels")
    with torch.no_grad():
        offline = magt(**batch, window=WINDOW).logits[0, -1].softmax(-1).numpy()
    assert np.allclose(streamed, offline, atol=1e-5)
    result = evaluate_stage2(tiny_config(), run.best_checkpoint(), features_path(features, "dev"), WINDOW)
    assert result["weighted_f1"] == pytest.approx(run.load_metrics("dev")["windows"][str(WINDOW)]["weighted_f1"])


def test_resume_continues_from_the_saved_epoch(
    features: Path, trained: tuple[RunFolder, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stage2._train_one_epoch
    trained_epochs: list[int] = []

    def crash_at_3(*args, **kw):
        if args[-1] == 3:
            raise RuntimeError("simulated crash")
        trained_epochs.append(args[-1])
        return real(*args, **kw)

    monkeypatch.setattr(stage2, "_train_one_epoch", crash_at_3)
    run = RunFolder(tmp_path / "r")
    with pytest.raises(RuntimeError, match="simulated"):
        train_stage2(tiny_config(), features, run)
    assert trained_epochs == [0, 1, 2]

    def record(*args, **kw):
        trained_epochs.append(args[-1])
        return real(*args, **kw)

    monkeypatch.setattr(stage2, "_train_one_epoch", record)
    summary = train_stage2(tiny_config(), features, run, resume=True)
    assert trained_epochs == [0, 1, 2, 3, 4]  # resumed at epoch 3, not from scratch
    history = run.load_metrics("history")["epochs"]
    reference = trained[0].load_metrics("history")["epochs"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert [h["dev"] for h in history] == [h["dev"] for h in reference]
    assert summary["best_epoch"] == trained[1]["best_epoch"]


def test_served_dialogues_repeat_untouched_and_select_on_their_source() -> None:
    from training.stage2.paired_dialogues import ComposeSettings

    train = make_dialogues(6, "train", 3)
    served = [dataclasses.replace(d, source="served", did=f"served{i}") for i, d in enumerate(make_dialogues(2, "train", 4))]
    cfg = tiny_config(served_repeat=3, pair_prob=1.0, pair_agree=1.0)
    kinds = choose_feature_kinds(train, cfg.kd)
    out = stage2._epoch_train(train + served, kinds, MELD_LABELS, cfg, ComposeSettings(dialogues=0), 0)
    got = [d for d in out if d.source == "served"]
    assert len(out) == 6 + 3 * 2 and len(got) == 6
    for d in got:  # never lent a modality: what the service computed stays as it was (dropout may only mask)
        orig = next(s for s in served if s.did == d.did)
        for m in ("text", "audio", "video"):
            assert not (d.present[m] & ~orig.present[m]).any()
    dev_m = {"weighted_f1": 0.5, "by_source": {"served": {"weighted_f1": 0.9}, "meld": {"weighted_f1": 0.1}}}
    assert stage2._selection_value(dev_m, "weighted_f1", "served") == 0.9
    assert stage2._selection_value(dev_m, "weighted_f1", "") == 0.5
    assert stage2._selection_value({"weighted_f1": 0.4}, "weighted_f1", "served") == 0.4  # absent: all of dev
