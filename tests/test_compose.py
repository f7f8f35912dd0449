"""The conversation composer: deterministic plans, splits that never mix, and a rendered conversation that fits its script."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from shared_data import data_dir
from training.devset.compose import (
    CUE_TYPES,
    DEV_ACTORS,
    FER_FILES,
    MELD_FILES,
    TRAIN_ACTORS,
    ConversationPlan,
    SpeakerPlan,
    Sources,
    UtterancePlan,
    actors_of,
    compose,
    identity_split,
    plan,
    plan_counts,
    spoken_text,
)

EMO_CODES = ("01", "02", "03", "04", "05", "06", "07", "08")


def _fake_data(root: Path, drop_face_emotion: str = "fear") -> Path:
    """A data folder with the real layout and no media: plans never decode anything."""
    speech = root / "ravdess" / "speech_16k"
    speech.mkdir(parents=True)
    for actor in range(1, 21):
        for emo in EMO_CODES:
            for stmt in ("01", "02"):
                (speech / f"03-01-{emo}-01-{stmt}-01-{actor:02d}.flac").touch()
    meld = root / "meld"
    meld.mkdir()
    emotions = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    for split, name in MELD_FILES.items():
        with open(meld / name, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"])
            for d in range(6):
                for k, emo in enumerate(emotions):
                    w.writerow([0, f"{split} line {d} {k} about {emo} \u2019ok\u2019", "X", emo, "neutral", d, k])
            w.writerow([0, "Too short", "X", "joy", "positive", 99, 0])
    faces = root / "faces_muxspace"
    faces.mkdir()
    with open(faces / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "emotion", "identity"])
        for i in range(80):
            ident = f"Person_{i}"
            w.writerow([f"{ident}_0001.jpg", "neutral", ident])
            w.writerow([f"{ident}_0002.jpg", "happiness", ident])
            for emo in ("anger", "sadness", "surprise", "disgust", "fear", "contempt"):
                if emo != drop_face_emotion and i % 4 == 0:
                    w.writerow([f"{ident}_{emo}.jpg", emo, ident])
    fer = root / "fer2013"
    fer.mkdir()
    names = np.array(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])
    for split, name in FER_FILES.items():
        labels = np.arange(70) % 7
        np.savez(fer / name, images=np.zeros((70, 48, 48), np.uint8), labels=labels, label_names=names)
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_data(tmp_path_factory.mktemp("composedata"))


def _dicts(plans: list[ConversationPlan]) -> list[dict]:
    return [p.to_dict() for p in plans]


def test_plan_is_deterministic_and_a_prefix(fake: Path) -> None:
    src = Sources.load(fake, "dev")
    a, b = plan(src, 3, 6), plan(Sources.load(fake, "dev"), 3, 6)
    assert _dicts(a) == _dicts(b)
    assert _dicts(plan(src, 3, 3)) == _dicts(a)[:3]
    assert _dicts(plan(src, 4, 6)) != _dicts(a)


def test_plan_shape_and_balance(fake: Path) -> None:
    plans = plan(Sources.load(fake, "train"), 0, 60)
    for p in plans:
        assert 2 <= len(p.speakers) <= 3 and 6 <= len(p.utterances) <= 10
        assert {s.kind for s in p.speakers} == {"ravdess", "espeak"}
        assert len({s.identity for s in p.speakers}) == len(p.speakers)
        assert len({s.espeak_voice for s in p.speakers if s.kind == "espeak"}) == sum(s.kind == "espeak" for s in p.speakers)
        assert {u.speaker for u in p.utterances} == {s.name for s in p.speakers}
        kinds = {s.name: s.kind for s in p.speakers}
        for u in p.utterances:
            assert 0.6 <= u.gap_before <= 1.2
            assert u.cue_type in CUE_TYPES
            assert ("voice" in u.cues) <= (kinds[u.speaker] == "ravdess")
            assert ("words" in u.cues) <= (kinds[u.speaker] == "espeak")
            assert (u.emotion == "neutral") == (u.cue_type == "none")
            if "face" in u.cues:
                assert u.face["kind"] != "absent" and u.face["emotion"] == u.emotion
            elif u.face["kind"] != "absent":
                assert u.face["emotion"] == "neutral"
            if u.speech["kind"] == "ravdess" and "voice" not in u.cues:
                assert u.speech["ravdess_emotion"] in ("neutral", "calm")
    counts = plan_counts(plans)
    cue = list(counts["cue_types"].values())
    assert max(cue) - min(cue) <= 2
    emo = [v for k, v in counts["emotions"].items() if k != "neutral"]
    assert max(emo) - min(emo) <= 3
    assert 0.15 <= counts["neutral_share"] <= 0.25
    assert 0.12 <= counts["absent_share"] <= 0.3


def test_fer_fallback_when_no_photo_of_the_emotion(fake: Path) -> None:
    faces = [u.face for p in plan(Sources.load(fake, "dev"), 1, 40) for u in p.utterances]
    fear = [f for f in faces if f.get("emotion") == "fear"]
    assert fear and all(f["kind"] == "fer" and f["file"] == FER_FILES["dev"] for f in fear)
    assert all(f["kind"] == "muxspace" for f in faces if f.get("emotion") == "anger")


def _check_split(plans: list[ConversationPlan], src: Sources, root: Path) -> None:
    split = src.split
    with open(root / "meld" / MELD_FILES[split], encoding="utf-8", newline="") as fh:
        lines = {(int(r["Dialogue_ID"]), int(r["Utterance_ID"])): spoken_text(r["Utterance"]) for r in csv.DictReader(fh)}
    n_fer = len(np.load(root / "fer2013" / FER_FILES[split])["labels"])
    for p in plans:
        for s in p.speakers:
            assert identity_split(s.identity) == split
            if s.kind == "ravdess":
                assert s.actor in actors_of(split)
        for u in p.utterances:
            if u.speech["kind"] == "ravdess":
                actor = int(u.speech["file"][:-5].split("-")[6])
                assert actor in (DEV_ACTORS if split == "dev" else TRAIN_ACTORS)
            else:
                assert u.speech["split"] == split
                assert lines[u.speech["dialogue"], u.speech["utterance"]] == u.text
            if u.face["kind"] == "muxspace":
                assert identity_split(u.face["identity"]) == split
            elif u.face["kind"] == "fer":
                assert u.face["file"] == FER_FILES[split] and 0 <= u.face["index"] < n_fer


def test_splits_never_mix_fake(fake: Path) -> None:
    for split in ("dev", "train"):
        src = Sources.load(fake, split)
        _check_split(plan(src, 0, 30), src, fake)


def test_split_rules() -> None:
    assert set(DEV_ACTORS) == {17, 18, 19, 20} and set(TRAIN_ACTORS) == set(range(1, 17))
    assert identity_split("AJ_Cook") == identity_split("AJ_Cook")
    ids = [f"Someone_{i}" for i in range(2000)]
    share = sum(identity_split(i) == "dev" for i in ids) / len(ids)
    assert 0.2 < share < 0.3


def test_plan_only_writes_manifest_and_plan(fake: Path, tmp_path: Path) -> None:
    manifest = compose(fake, "train", tmp_path / "out", 5, 2, plan_only=True)
    assert manifest["count"] == 5 and manifest["plan_only"] and manifest["split"] == "train"
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"]
    plans = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert [p["id"] for p in plans] == [f"conv-{k:03d}" for k in range(5)]
    assert not list((tmp_path / "out").glob("*.mp4"))


REAL = data_dir()
needs_data = pytest.mark.skipif(not (REAL / "ravdess" / "speech_16k").is_dir(),
                                reason=f"real data not found at {REAL}")


@needs_data
def test_splits_never_mix_real_data() -> None:
    seen: dict[str, set] = {}
    for split, n in (("dev", 30), ("train", 60)):
        src = Sources.load(REAL, split)
        plans = plan(src, 0, n)
        _check_split(plans, src, REAL)
        seen[split] = {s.identity for p in plans for s in p.speakers}
    assert not seen["dev"] & seen["train"]


@needs_data
def test_render_two_utterances(tmp_path: Path) -> None:
    from training.devset.compose_render import SR, Renderer
    from magtkd_stream.media import MediaSpan, load_audio, probe

    src = Sources.load(REAL, "dev")
    actor = SpeakerPlan("Actor18", "ravdess", next(iter(src.faces)), actor=18)
    voice = SpeakerPlan("Iris", "espeak", list(src.faces)[1], espeak_voice="en-gb+f2", pitch=58, rate=160)
    clip = src.ravdess[18]["anger"][0]
    utts = [
        UtterancePlan(0, "Actor18", "anger", "voice", ["voice"], "Kids are talking by the door", 0.6,
                      {"kind": "ravdess", "file": clip, "actor": 18}, {"kind": "absent"}),
        UtterancePlan(1, "Iris", "joy", "words+face", ["words", "face"], "That is wonderful, I love it so much.", 0.9,
                      {"kind": "meld", "split": "dev", "dialogue": 0, "utterance": 0},
                      {"kind": "fer", "file": FER_FILES["dev"], "index": int(src.fer["joy"][0]), "emotion": "joy"}),
    ]
    doc = Renderer(src).render(ConversationPlan("conv-t", "dev", 0, [actor, voice], utts), tmp_path)
    media = tmp_path / "conv-t.mp4"
    info = probe(media)
    assert info.has_audio and info.has_video
    assert abs((info.duration or 0) - doc["duration"]) < 0.25
    saved = json.loads((tmp_path / "conv-t.json").read_text())
    assert saved["utterances"][1]["sources"]["face"]["kind"] == "fer" and saved["utterances"][0]["face"] == "absent"
    audio = load_audio(MediaSpan(str(media)), sr=SR)
    u0, u1 = saved["utterances"]
    assert u0["start"] == pytest.approx(0.6, abs=0.01)
    assert u1["start"] - u0["end"] == pytest.approx(0.9, abs=0.01)

    def rms(a: float, b: float) -> float:
        seg = audio[int(a * SR): int(b * SR)]
        return float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0

    for u in (u0, u1):
        assert rms(u["start"] + 0.05, u["start"] + 0.3) > 10 * max(rms(0.05, 0.5), 1e-4)
        assert rms(u["end"] - 0.3, u["end"] - 0.05) > 10 * max(rms(u0["end"] + 0.15, u1["start"] - 0.15), 1e-4)
    assert rms(u1["end"] + 0.15, doc["duration"] - 0.1) < 0.005
