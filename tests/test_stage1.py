"""Stage 1 (teacher, students, KD), the frozen-backbone cache, feature extraction and the paired KD experiment.

Runs the tiny profile on a small dataset built here: per-class sentences,
per-class tones in wav files and per-class colours in mp4 clips, with one
corrupt audio clip and one utterance without audio.
"""

from __future__ import annotations

import os
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from magtkd_stream.model.checkpoint import load_checkpoint  # noqa: E402
from magtkd_stream.config import ConfigError, load_config  # noqa: E402
from magtkd_stream.encoders import build_encoder  # noqa: E402
from magtkd_stream.model.fusion import FusionModel  # noqa: E402
from magtkd_stream.labels import MELD_LABELS  # noqa: E402
from magtkd_stream.media import MediaSpan  # noqa: E402
from training.data.types import Dataset, Dialogue, Utterance  # noqa: E402
from shared_data import data_dir

SENTENCES = {0: ("I am so angry with you!", "This makes me furious!"),
             3: ("I am so happy today!", "What wonderful news!"),
             5: ("I feel so sad and lonely.", "I miss her and want to cry.")}
TONE_HZ = {0: 300.0, 3: 700.0, 5: 1500.0}
COLOUR = {0: (0, 0, 220), 3: (0, 220, 220), 5: (220, 0, 0)}
SIZES = {"train": 8, "dev": 4, "test": 3}  # dialogues of 4 utterances
CORRUPT_UID, NO_AUDIO_UID = "syn/train/d0u1", "syn/train/d1u1"
BASE = ["train.stage1.device=cpu", "train.stage1.epochs=6", "train.stage1.lr=0.01",
        "encoders.text.context_turns=1"]




def _write_wav(path: Path, label: int, rng: np.random.Generator) -> None:
    t = np.arange(8000) / 16000
    x = 0.3 * np.sin(2 * np.pi * TONE_HZ[label] * t) + 0.02 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((x * 32767).astype(np.int16).tobytes())


def _write_mp4(path: Path, label: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            img = np.zeros((32, 32, 3), np.uint8)
            img[:] = COLOUR[label]
            img[i * 4 : i * 4 + 8, :8] = 255
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 8)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Learnable in every modality; every second utterance has video; one corrupt and one missing audio."""
    root = tmp_path_factory.mktemp("stage1_media")
    rng = np.random.default_rng(0)
    splits: dict[str, list[Dialogue]] = {}
    for split, n in SIZES.items():
        dialogues = []
        for d in range(n):
            utts = []
            for u in range(4):
                label = (0, 3, 5)[(d + u) % 3]
                wav = root / f"{split}_{d}_{u}.wav"
                _write_wav(wav, label, rng)
                video = None
                if u % 2 == 0:
                    _write_mp4(root / f"{split}_{d}_{u}.mp4", label)
                    video = MediaSpan(str(root / f"{split}_{d}_{u}.mp4"))
                text = SENTENCES[label][int(rng.integers(2))]
                utts.append(Utterance(f"syn/{split}/d{d}u{u}", ("Ann", "Ben")[u % 2], text, label,
                                      MediaSpan(str(wav)), video))
            dialogues.append(Dialogue(f"d{d}", split, utts, "syn"))
        splits[split] = dialogues
    bad = root / "corrupt.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 4)
    by_uid = {u.uid: u for d in splits["train"] for u in d.utterances}
    by_uid[CORRUPT_UID].audio = MediaSpan(str(bad))
    by_uid[NO_AUDIO_UID].audio = None
    return Dataset("syn", MELD_LABELS, splits)


def _cfg(*extra: str):
    return load_config("tiny", [*BASE, *extra])


class RowCounter:
    """Counts utterances passed through an encoder's forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        module.register_forward_hook(self._hook)

    def _hook(self, _m, _args, out) -> None:
        self.rows += int(out.vectors.shape[0])


@pytest.fixture(scope="module")
def text_teacher(data: Dataset, tmp_path_factory: pytest.TempPathFactory):
    from training.stage1.train import train_stage1

    run = tmp_path_factory.mktemp("run_text")
    return train_stage1(_cfg("train.stage1.epochs=12"), data, "text", run=run, progress=False)


@pytest.fixture(scope="module")
def audio_ce(data: Dataset, tmp_path_factory: pytest.TempPathFactory):
    from training.stage1.train import train_stage1

    return train_stage1(_cfg(), data, "audio", run=tmp_path_factory.mktemp("run_audio"), progress=False)


def test_text_teacher_beats_chance_and_checkpoint_fits_fusion(data: Dataset, text_teacher) -> None:
    m = text_teacher.metrics
    # three balanced classes: chance weighted-F1 is about 1/3
    assert m["best_dev_weighted_f1"] > 0.55
    assert m["dev"]["weighted_f1"] == pytest.approx(m["best_dev_weighted_f1"])
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["frozen_backbone"] is True and "test" in m

    ck = load_checkpoint(text_teacher.checkpoint)
    assert "text.head.proj.weight" in ck.tensors and "text.head.cls.bias" in ck.tensors
    assert not any(k.startswith("text.encoder.") for k in ck.tensors)  # frozen: nothing of the encoder
    dims = ck.extra["encoder_dims"]
    assert dims == {"text": text_teacher.model.encoder.dim}
    cfg = ck.config
    fusion = FusionModel(cfg, {"text": dims["text"], "audio": 8, "video": 8}, len(ck.labels))
    fusion.heads["text"].load_state_dict(ck.state_dict("text.head"))  # strict: same keys and shapes
    assert torch.equal(fusion.heads["text"].proj.weight, text_teacher.model.head.proj.weight)


def test_frozen_encoder_runs_once_per_utterance_and_caches_on_disk(data: Dataset, tmp_path: Path) -> None:
    from training.stage1.train import train_stage1

    cfg = _cfg("train.stage1.epochs=3")
    usable = sum(1 for s in data.splits for u in data.utterances(s) if u.audio is not None)
    encoder = build_encoder("audio", cfg)
    encoder.set_trainable_layers(0)
    counter = RowCounter(encoder)
    result = train_stage1(cfg, data, "audio", run=tmp_path, encoder=encoder, progress=False)
    assert len(result.metrics["history"]) == 3
    assert counter.rows == usable - 1  # every utterance with audio once, the corrupt clip never
    assert list((tmp_path / "cache").glob("audio-syn-*.npz"))

    again = build_encoder("audio", cfg)
    again.load_state_dict(encoder.state_dict())
    again.set_trainable_layers(0)
    counter2 = RowCounter(again)
    second = train_stage1(cfg, data, "audio", run=tmp_path, encoder=again, progress=False)
    assert counter2.rows == 0  # the run folder's cache served every split
    assert second.metrics["counts"]["train"] == result.metrics["counts"]["train"]


def test_corrupt_clip_and_missing_audio_are_skipped_and_counted(data: Dataset, audio_ce, tmp_path: Path) -> None:
    from training.stage1.train import train_stage1

    counts = audio_ce.metrics["counts"]["train"]
    assert counts["unreadable_clip"] == 1 and counts["absent"] == 1
    assert counts["used"] == counts["utterances"] - 2
    # the live path (a trainable encoder layer) meets the same clip every epoch and still finishes
    live = train_stage1(_cfg("train.stage1.epochs=2", "encoders.audio.trainable_layers=1"), data, "audio",
                        run=None, progress=False)
    assert live.metrics["frozen_backbone"] is False
    assert live.metrics["counts"]["train"]["unreadable_clip"] == 1
    assert live.metrics["counts"]["train"]["used"] == counts["used"]


def test_kd_student_uses_teacher_once_and_differs_from_ce(data: Dataset, text_teacher, audio_ce) -> None:
    from training.stage1.train import train_stage1

    counter = RowCounter(text_teacher.model.encoder)
    kd = train_stage1(_cfg(), data, "audio", run=None, teacher=text_teacher.model, progress=False)
    used = kd.metrics["counts"]["train"]["used"]
    assert counter.rows == used  # the teacher saw each training utterance once, not once per epoch
    assert kd.metrics["teacher"] == "text" and kd.metrics["name"] == "audio_kd"
    losses = [h["loss"] for h in kd.metrics["history"]]
    assert losses[-1] < losses[0]
    # same seed, same data, same backbone: only the KD terms can make the heads differ
    assert not torch.allclose(kd.model.head.cls.weight, audio_ce.model.head.cls.weight)
    with pytest.raises(ValueError, match="kd.teacher"):
        train_stage1(_cfg("kd.teacher=video"), data, "audio", teacher=text_teacher.model, progress=False)
    # KD after CE: starting from the CE student, a vanishing learning rate keeps its head
    cont = train_stage1(_cfg("train.stage1.epochs=1", "train.stage1.lr=1e-12"), data, "audio",
                        teacher=text_teacher.model, init_from=audio_ce.model, progress=False)
    assert torch.allclose(cont.model.head.cls.weight, audio_ce.model.head.cls.weight, atol=1e-6)


def test_trainable_layers_change_only_the_chosen_params(data: Dataset, tmp_path: Path) -> None:
    from training.stage1.train import train_stage1
    from training.stage1.state import build_seeded_encoder, load_stage1_model

    cfg = _cfg("train.stage1.epochs=2", "encoders.text.trainable_layers=1", "train.stage1.lr=0.003")
    before = {k: v.clone() for k, v in build_seeded_encoder("text", cfg).state_dict().items()}
    result = train_stage1(cfg, data, "text", run=tmp_path, progress=False)
    assert result.metrics["frozen_backbone"] is False
    after = result.model.encoder.state_dict()
    top = [k for k in before if ".layer.1." in k and "weight" in k]
    frozen = [k for k in before if ".layer.0." in k or "embeddings" in k]
    assert top and frozen
    assert all(not torch.equal(before[k], after[k]) for k in top)
    assert all(torch.equal(before[k], after[k]) for k in frozen)

    ck = load_checkpoint(result.checkpoint)
    enc_keys = [k for k in ck.tensors if k.startswith("text.encoder.")]
    assert enc_keys and all(".layer.1." in k for k in enc_keys)  # only what was trained is stored
    reloaded = load_stage1_model(result.checkpoint).state_dict()
    assert all(torch.equal(reloaded[f"encoder.{k}"], v) for k, v in after.items())
    assert torch.equal(reloaded["head.cls.weight"], result.model.head.cls.weight)


def test_face_crops_train_the_face_cnn_and_keep_its_batch_norm_statistics(tmp_path: Path) -> None:
    """FER2013-style 48x48 faces in Utterance.arrays feed the face CNN; trained stages keep their BN stats."""
    from training.stage1.train import train_stage1
    from training.stage1.state import load_stage1_model

    rng = np.random.default_rng(2)
    splits = {}
    for split, n in (("train", 24), ("dev", 9)):
        dialogues = []
        for i in range(n):
            label = (0, 3, 5)[i % 3]
            face = np.clip(rng.normal(60 + 70 * (i % 3), 20, size=(48, 48)), 0, 255).astype(np.uint8)
            utt = Utterance(f"fer/{split}/{i}", "unknown", "", label, None, None, {"face": face})
            dialogues.append(Dialogue(str(i), split, [utt], "fer2013"))
        splits[split] = dialogues
    faces = Dataset("fer", MELD_LABELS, splits)
    cfg = load_config("tiny", [*BASE, "train.stage1.epochs=2", "encoders.video.kind=face_cnn",
                               "encoders.video.random_init={stem_width: 4, block_widths: [8, 8]}",
                               "encoders.video.image_mean=null", "encoders.video.image_std=null",
                               "encoders.video.image_size=null", "encoders.video.trainable_layers=2"])
    result = train_stage1(cfg, faces, "video", run=tmp_path, progress=False)
    assert result.metrics["counts"]["train"]["used"] == 24
    ck = load_checkpoint(result.checkpoint)
    assert "video.encoder.cnn.blocks.1.bn1.running_mean" in ck.tensors  # trained block: weights and BN stats
    assert "video.encoder.cnn.head.weight" in ck.tensors
    assert not any(k.startswith(("video.encoder.cnn.stem.", "video.encoder.cnn.blocks.0.")) for k in ck.tensors)
    reloaded = load_stage1_model(result.checkpoint)
    from magtkd_stream.encoders.base import VideoInput

    items = [VideoInput([faces.splits["dev"][i].utterances[0].arrays["face"]]) for i in range(3)]
    with torch.inference_mode():
        a = result.model(**result.model.encoder.collate(items))[1]
        b = reloaded(**reloaded.encoder.collate(items))[1]
    assert torch.allclose(a, b, atol=1e-6)


def test_resume_continues_from_the_saved_epoch(data: Dataset, tmp_path: Path) -> None:
    from training.stage1.train import train_stage1

    first = train_stage1(_cfg("train.stage1.epochs=2"), data, "video", run=tmp_path, progress=False)
    resumed = train_stage1(_cfg("train.stage1.epochs=4"), data, "video", run=tmp_path, resume=True, progress=False)
    hist = resumed.metrics["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[:2] == first.metrics["history"]
    assert resumed.metrics["counts"]["train"]["absent"] == 16  # only every second utterance has video


def test_extract_writes_every_split_with_presence(data: Dataset, text_teacher, audio_ce, tmp_path: Path) -> None:
    from training.stage2.extract import extract_features
    from training.stage2.features import load_features, load_heads
    from training.stage1.train import train_stage1

    cfg = _cfg("train.stage1.epochs=1")
    video = train_stage1(cfg, data, "video", progress=False)
    kd = train_stage1(cfg, data, "audio", teacher=text_teacher.model, progress=False)
    plain_rows, kd_rows = RowCounter(audio_ce.model.encoder), RowCounter(kd.model.encoder)
    models = {"text": text_teacher.model, "audio": audio_ce.model, "video": video.model}
    paths = extract_features(cfg, data, models, tmp_path / "feats", {"audio": kd.model}, progress=False)
    assert set(paths) == {"train", "dev", "test"}
    n_audio = sum(1 for s in data.splits for u in data.utterances(s) if u.audio is not None) - 1
    assert plain_rows.rows == n_audio and kd_rows.rows == 0  # equal frozen backbones run once for both heads

    dialogues, meta = load_features(paths["train"])
    assert meta["feature_dim"] == cfg.feature_dim and meta["labels"] == list(MELD_LABELS)
    assert set(meta["encoder_dims"]) == {"text", "audio", "video"}
    assert [d.did for d in dialogues] == [d.did for d in data.splits["train"]]
    first = dialogues[0]
    assert set(first.feats) == {"text", "audio", "audio_kd", "video"}
    assert all(a.shape == (4, cfg.feature_dim) and a.dtype == np.float32 for a in first.feats.values())
    assert first.speakers.tolist() == [0, 1, 0, 1]
    assert first.labels.tolist() == [u.label for u in data.splits["train"][0].utterances]
    present = {d.did: d.present for d in dialogues}
    assert present["d0"]["audio"].tolist() == [True, False, True, True]  # d0u1 is the corrupt clip
    assert present["d1"]["audio"].tolist() == [True, False, True, True]  # d1u1 has no audio
    assert all(d.present["video"].tolist() == [True, False, True, False] for d in dialogues)
    assert all(d.present["text"].all() for d in dialogues)
    assert not first.feats["audio"][1].any() and first.feats["audio"][0].any()
    assert not np.allclose(first.feats["audio"][0], first.feats["audio_kd"][0])  # two different heads
    with torch.inference_mode():  # the stored text feature is the head's output on the backbone vector
        ref = text_teacher.model.encoder.encode([_text_input(data, 0, 2)])
        expect = text_teacher.model.head(ref.vectors)[0][0].numpy()
    np.testing.assert_allclose(first.feats["text"][2], expect, rtol=1e-4, atol=1e-5)
    assert set(load_heads(paths["dev"])) == {"text", "audio", "audio_kd", "video"}


def _text_input(data: Dataset, dialogue: int, pos: int):
    from magtkd_stream.encoders.base import TextInput

    utts = data.splits["train"][dialogue].utterances
    return TextInput(utts[pos].speaker, utts[pos].text, [(u.speaker, u.text) for u in utts[:pos]])


# ----------------------------------------------------------------------------- paired experiment


def _paired_npz(path: Path) -> Path:
    """Actors 1-20, 8 emotions x 2 repetitions: AUs carry the emotion clearly, MFCCs faintly."""
    rng = np.random.default_rng(1)
    au_centres, mf_centres = rng.normal(size=(8, 35)), rng.normal(size=(8, 259))
    ids, rows = [], []
    for actor in range(1, 21):
        for emotion in range(1, 9):
            for rep in (1, 2):
                ids.append(f"01-01-{emotion:02d}-01-01-{rep:02d}-{actor:02d}")
                rows.append(np.concatenate([au_centres[emotion - 1] + 0.8 * rng.normal(size=35),
                                            0.25 * mf_centres[emotion - 1] + rng.normal(size=259)]))
    np.savez(path, clip_ids=np.array(ids), features=np.asarray(rows, np.float32))
    return path


def test_stage2_asr_style_extracts_text_features_as_the_asr_writes(data: Dataset, text_teacher, tmp_path: Path) -> None:
    from dataclasses import replace

    from training.stage2.features import load_features
    from training.recipes import Stage1Set, extract_set
    from training.stage1.transcript_style import asr_style

    typed = next(d for d in data.splits["dev"] if any("!" in u.text for u in d.utterances))
    heard = replace(typed, utterances=[replace(u, text=asr_style(u.text)) for u in typed.utterances])
    models = Stage1Set(plain={"text": text_teacher})

    def text_features(dialogue, asr: bool) -> np.ndarray:
        cfg = _cfg(f"train.stage2.asr_style={str(asr).lower()}")
        out = tmp_path / f"{'heard' if dialogue is heard else 'typed'}-{asr}"
        paths = extract_set(cfg, Dataset("syn", MELD_LABELS, {"dev": [dialogue]}), models, out)
        return load_features(paths["dev"])[0][0].feats["text"]

    assert not np.allclose(text_features(typed, False), text_features(heard, False))  # "!" moves the features
    assert np.allclose(text_features(typed, True), text_features(heard, True))  # ... unless MAGT reads ASR style
    assert any("!" in u.text for u in typed.utterances)  # the dataset itself is left as it was
    with pytest.raises(ValueError, match="train.stage2.asr_style"):
        _cfg("train.stage2.asr_style=sometimes")


def test_array_encoder_standardises_and_marks_missing_rows_absent() -> None:
    from training.stage1.array_encoder import ArrayEncoder

    enc = ArrayEncoder("audio", "mfcc", 3, dim=4)
    enc.fit_inputs([np.array([1.0, 10.0, 5.0]), np.array([3.0, 30.0, 5.0])])
    batch = enc.collate([np.array([2.0, 20.0, 5.0]), None, np.array([3.0, 30.0, 5.0])])
    assert batch["present"].tolist() == [True, False, True]
    assert torch.allclose(batch["x"][0], torch.zeros(3)) and torch.allclose(batch["x"][2], torch.tensor([1.0, 1.0, 0.0]))
    out = enc(**batch)
    assert out.vectors.shape == (3, 4) and not out.vectors[1].any()
    with pytest.raises(ValueError, match="expected a row of 3"):
        enc.collate([np.zeros(5)])


def test_paired_kd_experiment_runs_on_a_small_file(tmp_path: Path) -> None:
    from training.stage1.array_encoder import PairedSettings, run_paired_kd_experiment

    npz = _paired_npz(tmp_path / "paired.npz")
    report = run_paired_kd_experiment(npz, tmp_path / "out", seeds=(0, 1),
                                      settings=PairedSettings(epochs=8, patience=0))
    assert (tmp_path / "out" / "paired_kd.json").is_file()
    assert report["counts"] == {"train": 14 * 16, "dev": 2 * 16, "test": 4 * 16}
    res = report["results"]
    assert set(res) == {"audio_ce", "video_teacher", "audio_kd"}
    for per in res.values():
        assert len(per["acc8"]["values"]) == 2
        # merging calm into neutral can only turn errors into hits
        assert all(a7 >= a8 for a7, a8 in zip(per["acc7"]["values"], per["acc8"]["values"]))
    assert res["video_teacher"]["acc8"]["mean"] > 0.5  # chance is 1/8


def _real_paired() -> Path:
    root = data_dir()
    return root / "ravdess" / "ravdess_au_mfcc_actors01-20.npz"


@pytest.mark.slow
def test_paired_kd_experiment_on_the_real_file(tmp_path: Path) -> None:
    from training.stage1.array_encoder import PairedSettings, run_paired_kd_experiment

    npz = _real_paired()
    if not npz.is_file():
        pytest.skip(f"real RAVDESS paired file not found at {npz}")
    report = run_paired_kd_experiment(npz, tmp_path, seeds=(0,), settings=PairedSettings(epochs=30))
    assert report["counts"]["test"] == 4 * 60
    assert report["results"]["video_teacher"]["acc8"]["mean"] > 0.25  # chance is 1/8


def test_length_grouped_batches_hold_similar_lengths_in_random_order() -> None:
    import torch

    from training.stage1.steps import length_grouped

    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 500, 256)]
    order = list(np.random.default_rng(1).permutation(256))
    out = length_grouped(order, lengths, 8, torch.Generator().manual_seed(0), pool_batches=32)
    assert sorted(out) == sorted(order), "every row once"
    batches = [out[i : i + 8] for i in range(0, 256, 8)]
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 40, spread  # random batches of 8 span about 350
    firsts = [min(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts), "batches are shuffled, not sorted"


def test_text_teacher_trains_on_asr_style_turns_and_scores_dev_both_ways(data: Dataset) -> None:
    from training.stage1.train import train_stage1
    from training.stage1.state import build_seeded_encoder

    cfg = _cfg("train.stage1.epochs=1", "encoders.text.trainable_layers=1", "train.stage1.asr_style_prob=1.0")
    encoder = build_seeded_encoder("text", cfg)
    encoder.set_trainable_layers(1)
    seen: list[tuple[bool, str]] = []
    collate = encoder.collate

    def spy(items):
        seen.extend((encoder.training, it.text) for it in items)
        return collate(items)

    encoder.collate = spy  # type: ignore[method-assign]
    typed = {u.text for s in data.splits for u in data.utterances(s) if u.text}
    assert any("!" in t for t in typed), "the synthetic data must contain typed '!' for this test to mean anything"
    result = train_stage1(cfg, data, "text", encoder=encoder, run=None, progress=False)
    assert "dev_asr_style" in result.metrics and result.metrics["dev_asr_style"]["n"] == result.metrics["dev"]["n"]
    trained = [t for training, t in seen if training]
    scored = [t for training, t in seen if not training]
    assert trained and not any("!" in t for t in trained)  # every training turn read as ASR output
    assert any("!" in t for t in scored)  # dev and test were also scored as typed


def test_augmented_copies_of_the_training_clips_join_the_audio_head_s_training(data: Dataset, tmp_path: Path) -> None:
    from training.stage1.train import train_stage1

    plain = train_stage1(_cfg("train.stage1.epochs=1"), data, "audio", run=tmp_path / "plain", progress=False)
    cfg = _cfg("train.stage1.epochs=1", "train.augment_copies=2", "train.speaker_norm=2")
    encoder = build_encoder("audio", cfg)
    encoder.set_trainable_layers(0)
    counter = RowCounter(encoder)
    result = train_stage1(cfg, data, "audio", run=tmp_path / "aug", encoder=encoder, progress=False)
    clean = plain.metrics["counts"]["train"]["used"]
    assert result.metrics["counts"]["train"]["used"] == 3 * clean  # two copies of every usable training clip
    assert result.metrics["counts"]["dev"]["used"] == plain.metrics["counts"]["dev"]["used"]  # dev stays clean
    assert counter.rows >= 2 * clean and len(list((tmp_path / "aug" / "cache").glob("*-aug1-*.npz"))) == 1
    with pytest.raises(ConfigError, match="train.augment_copies"):
        _cfg("train.augment_copies=-1")
