"""The lite recipe: one checkpoint from three single-modality sources, for the CPU lite profile.

No available corpus has text, voice and face together with emotion labels
under a usable licence, so the lite checkpoint mixes three:

- MELD dialogues (text only here): the prompted MiniLM text teacher, trained on
  MELD train and selected on MELD dev; it stays the teacher of record.
- RAVDESS speech (actors 01-16 train, 17-20 dev): the Whisper-vector audio head.
  Its two fixed sentences carry no emotion, so the transcript is kept (the
  text teacher reads it) but is neutral: stage 2 must learn to let the voice
  override it, which is what the evaluation shows.
- FER2013 faces (train / val): the face-CNN video head.

The sources share no utterance, so no student can be distilled from the text
teacher (KD needs the teacher's view of the same utterance): the audio and
video heads are trained with cross-entropy, and the run report says so. MAGT
is trained on the mixture of all three train splits and selected on the union
of the dev splits; absent modalities are masked, never zero-filled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.model.checkpoint import load_checkpoint
from magtkd_stream.config import Config, config_to_dict
from magtkd_stream.model.magt import MAGT
from training.data import load_fer2013, load_meld, load_ravdess_speech
from training.data.types import Dataset
from training.stage2.features import MODALITIES, choose_feature_kinds, features_path, load_features
from training.metrics import compute_metrics
from training.recipe_inputs import Limits, dataset_counts, subsample
from training.recipes import (
    Stage1Set,
    encoder_states,
    evaluate_checkpoint,
    export_checkpoint,
    extract_set,
    problems_of,
    stage1_model,
    stage1_speaker_norm,
    stream_checkpoint,
    write_report,
)
from training.runs import RunFolder
from training.stage1.train import Stage1Result
from training.studies.summary_table import write_summary_table

logger = logging.getLogger(__name__)

RAVDESS_TRAIN_ACTORS = tuple(range(1, 17))
RAVDESS_DEV_ACTORS = tuple(range(17, 21))
SUMMARY = "lite_summary.json"  # and summary.md: the same scores as a table
DEFAULT_EXPORT = Path(__file__).resolve().parent.parent / "magtkd_stream" / "assets" / "lite.safetensors"
NO_KD_NOTE = ("no KD for the lite audio and video heads: RAVDESS and FER2013 share no utterance with MELD, so the "
              "text teacher has no view of their inputs; both are trained with cross-entropy. The MELD text "
              "teacher is the teacher of record.")


@dataclass
class LiteData:
    """Where the three sources are: MELD CSV folder, RAVDESS folder (speech_16k/), FER2013 folder (.npz)."""

    meld: Path
    ravdess: Path
    fer: Path


def load_lite_sources(data: LiteData, limits: Limits, seed: int) -> dict[str, Dataset]:
    """The three datasets (MELD text only, RAVDESS with its fixed sentence as transcript), subsampled by `limits`."""
    sets = {
        "meld": load_meld(data.meld),
        "ravdess": load_ravdess_speech(data.ravdess, train_actors=RAVDESS_TRAIN_ACTORS,
                                       dev_actors=RAVDESS_DEV_ACTORS, with_text=True),
        "fer2013": load_fer2013(data.fer),
    }
    return {k: subsample(ds, limits, seed) for k, ds in sets.items()}


def _scores(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    m = compute_metrics(y_true, y_pred, labels)
    return {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1")}


@torch.no_grad()
def override_demo(checkpoint: Path, features_file: Path, window: int) -> dict[str, Any]:
    """Can the voice override a neutral transcript? Scores on RAVDESS dev features (text + audio present).

    Compares, per utterance, the text head alone (the fixed sentence), the audio
    head alone, MAGT given both, and MAGT with the text masked out. `overridden`
    counts utterances where the text-only prediction is wrong and the fused one
    right; `override_rate` divides it by the utterances the text alone gets wrong.
    """
    from training.stage2.evaluate import predict

    ck = load_checkpoint(checkpoint)
    dialogues, meta = load_features(features_file)
    labels = list(ck.labels)
    model = MAGT(ck.config.magt, ck.config.feature_dim, len(labels))
    model.load_state_dict(ck.state_dict("magt"))
    kinds = ck.extra.get("feature_kinds") or choose_feature_kinds(dialogues, ck.config.kd)
    device = torch.device("cpu")
    fused = predict(model, dialogues, kinds, window, 64, device, "ravdess fused")
    no_text = [dataclasses.replace(d, present={**d.present, "text": np.zeros(len(d), dtype=bool)})
               for d in dialogues]
    fused_audio = predict(model, no_text, kinds, window, 64, device, "ravdess fused, text masked")

    def head_pred(modality: str) -> np.ndarray:
        head = ck.state_dict(f"{modality}.head")
        cls = torch.nn.Linear(head["cls.weight"].shape[1], head["cls.weight"].shape[0])
        cls.load_state_dict({"weight": head["cls.weight"], "bias": head["cls.bias"]})
        rows = [d.feats[kinds[modality]][d.labels >= 0] for d in dialogues]
        return cls(torch.from_numpy(np.concatenate(rows))).argmax(-1).numpy()

    def present(modality: str) -> np.ndarray:
        return np.concatenate([d.present[modality][d.labels >= 0] for d in dialogues])

    y = fused.y_true
    text_pred, audio_pred = head_pred("text"), head_pred("audio")
    heard = present("audio")  # Whisper reports near-silent clips absent; MAGT then has the text alone
    wrong_text = text_pred != y
    overridden = wrong_text & (fused.y_pred == y)
    counts = lambda p: {labels[i]: int((p == i).sum()) for i in range(len(labels))}  # noqa: E731
    return {
        "n": int(y.size),
        "n_audio_present": int(heard.sum()),
        "window": window,
        "text_only": _scores(y, text_pred, labels),
        "audio_only": _scores(y[heard], audio_pred[heard], labels),
        "fused": _scores(y, fused.y_pred, labels),
        "fused_audio_present": _scores(y[heard], fused.y_pred[heard], labels),
        "fused_text_masked": _scores(y[heard], fused_audio.y_pred[heard], labels),
        "text_only_predictions": counts(text_pred),
        "fused_predictions": counts(fused.y_pred),
        "true_labels": counts(y),
        "text_only_wrong": int(wrong_text.sum()),
        "overridden": int(overridden.sum()),
        "override_rate": float(overridden.sum() / max(1, wrong_text.sum())),
        "fused_differs_from_text": float((fused.y_pred != text_pred).mean()),
        "fused_follows_audio": float((fused.y_pred[heard] == audio_pred[heard]).mean()),
    }


def run_lite(
    cfg: Config,
    data: LiteData,
    run: RunFolder,
    limits: Optional[Limits] = None,
    stage2_limits: Optional[Limits] = None,
    export: Optional[Path] = None,
    resume: bool = False,
    text_from: Optional[Path] = None,
    stage1_from: Optional[Path] = None,
    served: Sequence[Path] = (),
) -> dict[str, Any]:
    """Train the lite checkpoint end to end in `run`; returns the summary (also in lite_summary.json).

    limits: dialogues per source/split for everything (small runs, tests);
    stage2_limits: a further cap on what stage 2 trains and selects on (stage 1 and
    the stage-1 scores still use every loaded utterance). export: copy the final
    streaming checkpoint there. text_from: take the trained text teacher from this
    streaming checkpoint instead of fine-tuning it again (the longest stage by far);
    stage1_from: take every stage-1 model from it. served: `score-dev --vectors`
    outputs whose recorded vectors stage 2 trains (train) or selects (dev) on;
    they need the checkpoint that computed them as text_from or stage1_from.
    """
    from training.stage2.train import train_stage2

    limits, stage2_limits = limits or Limits(), stage2_limits or Limits()
    times: dict[str, float] = {}
    t_all = t0 = time.time()
    sources = load_lite_sources(data, limits, cfg.seed)
    times["load"] = time.time() - t0
    for name, ds in sources.items():
        if list(ds.labels) != list(_labels(cfg)):
            raise ValueError(f"source {name} is labelled {list(ds.labels)}, the recipe's labels are {cfg.labels}")
    report: dict[str, Any] = {
        "recipe": "lite", "data": {k: str(v) for k, v in dataclasses.asdict(data).items()},
        "limits": limits.to_dict(), "stage2_limits": stage2_limits.to_dict(),
        "counts": {k: dataset_counts(ds) for k, ds in sources.items()},
        "load_problems": problems_of(list(sources.values())),
        "splits": {"meld": "train / dev (selection) / test (reported once)",
                   "ravdess": f"actors {RAVDESS_TRAIN_ACTORS[0]}-{RAVDESS_TRAIN_ACTORS[-1]} train, "
                              f"{RAVDESS_DEV_ACTORS[0]}-{RAVDESS_DEV_ACTORS[-1]} dev (speaker-independent)",
                   "fer2013": "fer2013_train / fer2013_val (dev)"},
        "kd": NO_KD_NOTE,
    }

    t0 = time.time()
    reused = stage1_from or text_from
    if served and reused is None:
        raise ValueError("served vectors need the checkpoint that computed them: give --stage1-from (or --text-from)")
    if reused is not None:
        reuse_stage1(reused, cfg, run, MODALITIES if stage1_from is not None else ("text",))
    text = stage1_model(cfg, sources["meld"], "text", run, resume or reused is not None)
    audio = stage1_model(cfg, sources["ravdess"], "audio", run, resume or stage1_from is not None)
    video = stage1_model(cfg, sources["fer2013"], "video", run, resume or stage1_from is not None)
    times["stage1"] = time.time() - t0
    stage1 = Stage1Set(plain={"text": text, "audio": audio, "video": video})
    report["stage1"] = stage1.metrics()
    write_report(run, report)

    t0 = time.time()
    plan = {"meld": {"text": text}, "ravdess": {"text": text, "audio": audio}, "fer2013": {"video": video}}
    dirs = []
    for name, models in plan.items():
        out = run.path / "features" / name
        if not (resume and all(features_path(out, s).is_file() for s in sources[name].splits)):
            extract_set(cfg, sources[name], Stage1Set(plain=models), out, cache_dir=run.path / "cache",
                        keep=stage2_limits)
        dirs.append(out)
    if served:
        assert reused is not None
        dirs += served_features(served, reused, cfg, run, {"text": text, "audio": audio, "video": video})
    times["extract"] = time.time() - t0

    t0 = time.time()
    stage2 = train_stage2(cfg, dirs, run, resume=resume)
    times["stage2"] = time.time() - t0

    t0 = time.time()
    stream = stream_checkpoint(run, encoder_states(stage1))
    window = int(load_checkpoint(stream).extra.get("window", cfg.magt.window))
    dev_windows = run.load_metrics("dev")["windows"]
    summary: dict[str, Any] = {
        "checkpoint": str(stream),
        "checkpoint_bytes": stream.stat().st_size,
        "window": window,
        "meld_test": {
            "text_teacher_alone": report["stage1"]["text"].get("test"),
            "magt_full_context": stage2["test"].get("0"),
            f"magt_window_{window}": stage2["test"].get(str(window)),
        },
        "meld_dev_text_teacher": report["stage1"]["text"].get("dev"),
        "stage2_dev": {w: {k: v[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1")}
                       for w, v in dev_windows.items()},
        "stage2_dev_by_source": dev_windows[str(window)].get("by_source"),
        "stage2_best_epoch": stage2["best_epoch"],
        "ravdess_dev_audio_branch": report["stage1"]["audio"].get("dev"),
        "ravdess_dev_override": override_demo(stream, features_path(run.path / "features" / "ravdess", "dev"),
                                              window),
        "fer_val_face_branch": report["stage1"]["video"].get("dev"),
        "kd": NO_KD_NOTE,
    }
    meld_test = features_path(run.path / "features" / "meld", "test")
    if meld_test.is_file():
        summary["meld_test_streaming_checkpoint"] = evaluate_checkpoint(cfg, stream, meld_test, [0, window])
    times["evaluate"] = time.time() - t0
    if export is not None:
        summary["exported"] = str(export_checkpoint(stream, export))
    times["total"] = time.time() - t_all
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    summary["counts"] = report["counts"]
    summary["limits"] = {"all": limits.to_dict(), "stage2": stage2_limits.to_dict()}
    report.update({"summary": summary, "config": config_to_dict(cfg)})
    write_report(run, report)
    write_report(run, summary, SUMMARY)
    _log_summary(summary)
    write_summary_table(run.path, summary, f"magtkd-train lite: {run.path}")
    return summary


def reuse_stage1(checkpoint: Path, cfg: Config, run: RunFolder,
                 modalities: Sequence[str] = ("text",)) -> dict[str, Path]:
    """Write the heads (and fine-tuned encoder layers) of a streaming checkpoint as this run's stage-1 models.

    Why: the text teacher is by far the longest stage; and stage 2 trained on
    vectors the service computed with a checkpoint (`--served`) must read them
    through that checkpoint's heads.
    """
    from magtkd_stream.model.checkpoint import save_checkpoint

    ck = load_checkpoint(checkpoint, expect_labels=_labels(cfg), expect_profile=cfg.profile)
    dims = ck.extra.get("encoder_dims") or {}
    out = {}
    for m in modalities:
        if m not in dims:
            raise ValueError(f"{checkpoint} holds no {m} model (encoder_dims {dims})")
        mine, theirs = getattr(cfg.encoders, m), getattr(ck.config.encoders, m)
        if _vector_settings(mine) != _vector_settings(theirs):
            raise ValueError(f"{checkpoint}: its {m} encoder settings ({_vector_settings(theirs)}) are not the "
                             f"recipe's ({_vector_settings(mine)})")
        modules = {f"{m}.head": ck.state_dict(f"{m}.head")}
        encoder = ck.state_dict(f"{m}.encoder")
        if encoder:
            modules[f"{m}.encoder"] = encoder
        norm = (ck.extra.get("speaker_norm") or {}).get(m)
        if bool(norm) != (m == "audio" and cfg.train.speaker_norm > 0):
            raise ValueError(f"{checkpoint}: its {m} head was trained {'with' if norm else 'without'} per-speaker "
                             f"normalisation, the recipe's train.speaker_norm is {cfg.train.speaker_norm}")
        out[m] = save_checkpoint(run.best_checkpoint(f"stage1-{m}"), modules, cfg, ck.labels,
                                 extra={"encoder_dims": {m: int(dims[m])}, "stage": 1, "modality": m,
                                        "reused_from": str(checkpoint), **({"speaker_norm": {m: norm}} if norm else {})})
        run.save_metrics(f"stage1-{m}", {"name": m, "modality": m, "reused_from": str(checkpoint),
                                         "checkpoint": str(out[m]), "counts": {}})
        logger.info("stage 1 %s: reusing the model of %s", m, checkpoint)
    return out


def _vector_settings(section: Any) -> dict[str, Any]:
    """An encoder section as a dict without the keys that do not change the vectors it computes."""
    d = dataclasses.asdict(section)
    for key in ("device", "batch_size", "threads", "replicas", "detector", "detect_side"):  # detection: served crops only
        d.pop(key, None)
    return d


def served_features(served: Sequence[Path], checkpoint: Path, cfg: Config, run: RunFolder,
                    models: Mapping[str, Stage1Result]) -> list[Path]:
    """Features folders (one per served run) of stage-2 dialogues made of what the service computed."""
    from magtkd_stream.model.checkpoint import model_id
    from magtkd_stream.streaming.vector_tap import load_vectors
    from training.stage2.features import save_features
    from training.stage2.served import served_dialogues

    digest = model_id(str(checkpoint), cfg.profile).rsplit("@", 1)[1]
    kinds = {m: m for m in MODALITIES}
    norms = stage1_speaker_norm(Stage1Set(plain=dict(models)))
    heads = {m: (lambda x, h=models[m].model.head: h(x)[0]) for m in MODALITIES}
    dirs = []
    for k, folder in enumerate(served):
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        split = summary.get("split")
        if split not in ("train", "dev"):
            raise ValueError(f"{folder}: a served run of a {split!r} composition; expected train or dev")
        vec_files = sorted((folder / "vectors").glob("*.npz"))
        if not vec_files:
            raise FileNotFoundError(f"{folder}/vectors: no vectors; run `magtkd-train score-dev --vectors`")
        model = load_vectors(vec_files[0])[1].get("model") or ""
        if not model.endswith("@" + digest):
            raise ValueError(f"{folder}: its vectors were computed by {model!r}, not by {checkpoint} (@{digest}); "
                             "their text vectors come from that model's text encoder: pass it as --text-from or --stage1-from")
        _check_served_encoders(folder, load_vectors(vec_files[0])[1].get("encoders"), cfg)
        dialogues = served_dialogues(folder, heads, kinds, _labels(cfg), split, speaker_norm=norms)
        out = run.path / "features" / f"served-{k}"
        save_features(features_path(out, split), dialogues,
                      {"labels": list(_labels(cfg)), "feature_dim": cfg.feature_dim, "source": "served",
                       "served": str(folder)})
        dirs.append(out)
    return dirs


def _check_served_encoders(folder: Path, recorded: Optional[Mapping[str, Any]], cfg: Config) -> None:
    """Refuse served vectors that other encoder settings computed (e.g. another face CNN): the heads would misread them."""
    if recorded is None:
        logger.warning("%s: its vectors do not record their encoder settings (an older run); not checked", folder)
        return
    for m in MODALITIES:
        mine = json.loads(json.dumps(_vector_settings(getattr(cfg.encoders, m))))
        theirs = {k: v for k, v in (recorded.get(m) or {}).items() if k in mine}
        if theirs != mine:
            diff = sorted(k for k in mine if mine.get(k) != theirs.get(k))
            raise ValueError(f"{folder}: its {m} vectors were computed with other encoder settings than the recipe's "
                             f"({', '.join(f'{k}: {theirs.get(k)!r} vs {mine.get(k)!r}' for k in diff)}); "
                             "record them again with the recipe's encoders (score-dev --vectors --set ...)")


def _labels(cfg: Config) -> tuple[str, ...]:
    from magtkd_stream.labels import label_set

    return label_set(cfg.labels)


def _log_summary(s: dict[str, Any]) -> None:
    def fmt(m: Optional[dict]) -> str:
        return "n/a" if not m else f"acc {m['accuracy']:.3f} wF1 {m['weighted_f1']:.3f}"

    t = s["meld_test"]
    logger.info("MELD test: text teacher %s | MAGT full %s | MAGT window %d %s", fmt(t["text_teacher_alone"]),
                fmt(t["magt_full_context"]), s["window"], fmt(t[f"magt_window_{s['window']}"]))
    o = s["ravdess_dev_override"]
    logger.info("RAVDESS dev (held-out actors): audio branch %s | text only %s | fused %s | overridden %d of %d "
                "text-only errors (%.1f%%)", fmt(s["ravdess_dev_audio_branch"]), fmt(o["text_only"]),
                fmt(o["fused"]), o["overridden"], o["text_only_wrong"], 100 * o["override_rate"])
    logger.info("FER2013 val: face branch %s", fmt(s["fer_val_face_branch"]))


__all__ = ["DEFAULT_EXPORT", "LiteData", "load_lite_sources", "override_demo", "run_lite"]
