"""`magtkd-train` (also `python -m training`): every training step from one entry point.

    magtkd-train all --recipe configs/train_smoke.yaml --synthetic runs/synth
    magtkd-train all --recipe configs/train_meld_full.yaml --meld DATA/MELD.Raw --meld-clips DATA/MELD.Raw
    magtkd-train stage1 --modality text --recipe R --meld DIR --run-dir runs/x
    magtkd-train stage1 --modality audio --teacher runs/x/checkpoints/best-stage1-text.safetensors ...
    magtkd-train extract --run-dir runs/x --meld DIR      (stage-1 checkpoints of the run folder)
    magtkd-train stage2 --run-dir runs/x                  (features of the run folder)
    magtkd-train evaluate --checkpoint runs/x/checkpoints/stream.safetensors --features runs/x/features --window 8
    magtkd-train paired --paired DATA/ravdess/ravdess_au_mfcc_actors01-20.npz
    magtkd-train lite --data ../shared/data               (the shipped lite checkpoint)
    magtkd-train ravdess-audio --data ../shared/data --cache runs/lite-full/cache   (held-out-actor audio scores)
    magtkd-train compose --split dev --data ../shared/data --out runs/dev-compose --conversations 24 --seed 0
    magtkd-train score-dev --dev runs/dev-compose --out runs/dev-score [--limit 4]   (the product on them)

A recipe is a full configuration file (profile, encoders, magt, kd, train);
data locations are flags, never config keys. `--profile-override tiny` swaps in
configs/tiny.yaml's encoders, magt and feature_dim (keeping the recipe's
trainable_layers and magt.window, so the same training path runs) to try a
full recipe in seconds. Wrong configuration or data paths exit with code 2 and
one line naming the problem; a failure during training exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from magtkd_stream.config import Config, ConfigError
from magtkd_stream.labels import label_set
from magtkd_stream.names import MODALITIES
from training.recipe_inputs import Limits, load_recipe, recipe_path

log = logging.getLogger("training.cli")

STAGE1_KINDS = ("text", "audio", "video", "audio_kd", "video_kd")


class UsageError(Exception):
    """The command line, the recipe or a data path is wrong: reported in one line, exit code 2."""


# ------------------------------------------------------------------ arguments
def _common(p: argparse.ArgumentParser, recipe_help: str) -> None:
    p.add_argument("--recipe", default=None, help=recipe_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.stage2.epochs=5 (repeatable)")
    p.add_argument("--profile-override", default=None, metavar="PROFILE",
                   help="swap in a profile's encoders, magt and feature_dim (e.g. tiny), keeping the recipe's "
                        "trainable_layers and magt.window")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder to use (default: a new one under --runs-root)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="where new run folders go (default runs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the recipe's)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")


def _data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (exactly one of --meld, --iemocap, --synthetic)")
    g.add_argument("--meld", type=Path, help="folder with MELD's train/dev/test_sent_emo.csv")
    g.add_argument("--meld-clips", type=Path, help="folder holding MELD's clip folders (train_splits/, ...)")
    g.add_argument("--iemocap", type=Path, help="the IEMOCAP index CSV (docs/DATASETS.md)")
    g.add_argument("--synthetic", type=Path, help="synthetic MELD-layout folder; generated there if missing")
    g.add_argument("--synthetic-dialogues", type=int, default=6, help="dialogues per split when generating")
    g.add_argument("--synthetic-defects", action="store_true",
                   help="generate one corrupt, one missing and one over-long clip")
    g.add_argument("--max-clip-s", type=float, default=30.0,
                   help="MELD clips longer than this are cut to it, with a logged warning (default 30)")
    _limits(g)


def _limits(g: Any) -> None:
    g.add_argument("--limit-per-split", type=int, default=None, metavar="N",
                   help="use at most N dialogues of every split of every source (quick runs)")
    g.add_argument("--limit", action="append", default=[], metavar="SOURCE[:SPLIT]=N",
                   help="at most N dialogues of a source (or one of its splits), e.g. meld:train=200")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magtkd-train", description="Train and evaluate MAGTKD models.")
    sub = parser.add_subparsers(dest="command", required=True)
    need = "recipe YAML (configs/train_*.yaml or a path); default: the run folder's config.yaml"

    p = sub.add_parser("all", help="stage 1 -> extract -> stage 2 -> evaluate in one run folder")
    _common(p, need)
    _data(p)
    p.add_argument("--export", type=Path, default=None, help="also copy the streaming checkpoint here")

    p = sub.add_parser("stage1", help="train one stage-1 model (a teacher, or a student with --teacher)")
    _common(p, need)
    _data(p)
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--teacher", type=Path, default=None, help="stage-1 checkpoint of the teacher: train with KD")
    p.add_argument("--name", default=None, help="model name in the run folder (default: modality[_kd])")

    p = sub.add_parser("extract", help="write stage-1 features of every split for stage 2")
    _common(p, need)
    _data(p)
    p.add_argument("--stage1", action="append", default=[], metavar="KIND=CHECKPOINT",
                   help=f"stage-1 checkpoint per kind {list(STAGE1_KINDS)} (default: those in --run-dir)")
    p.add_argument("--out", type=Path, default=None, help="features folder (default RUN/features)")

    p = sub.add_parser("stage2", help="train MAGT on extracted features")
    _common(p, need)
    p.add_argument("--features", type=Path, action="append", default=[],
                   help="features folder with train/dev[/test].safetensors (repeatable: a mixture; "
                        "default RUN/features or its per-source subfolders)")

    p = sub.add_parser("evaluate", help="score a streaming checkpoint on a features split")
    _common(p, "recipe for batch size and device (default: the checkpoint's own config)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint (default RUN/checkpoints/stream.safetensors)")
    p.add_argument("--features", type=Path, action="append", default=[],
                   help="features folder with <split>.safetensors (repeatable: the union of several sources, "
                        "scored as one set and by source; default RUN/features)")
    p.add_argument("--split", default="test")
    p.add_argument("--window", type=int, action="append", default=None,
                   help="context window, 0 = full dialogue (repeatable; default: the checkpoint's)")

    p = sub.add_parser("text-style", help="score a checkpoint's text teacher on MELD, as typed and as ASR output")
    p.add_argument("--checkpoint", type=Path, required=True, help="a streaming or stage-1 text checkpoint "
                                                                   "(its own config builds the encoder)")
    p.add_argument("--meld", type=Path, required=True, help="folder with MELD's train/dev/test_sent_emo.csv")
    p.add_argument("--split", default="dev", help="split to score (default dev)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")

    p = sub.add_parser("paired", help="RAVDESS face-AU -> voice-MFCC distillation experiment")
    _common(p, "recipe whose kd section gives the KD weights (default configs/train_lite.yaml)")
    p.add_argument("--paired", type=Path, default=None, help="ravdess_au_mfcc_actors01-20.npz")
    p.add_argument("--data", type=Path, default=None, help="data root holding ravdess/ (default $MAGTKD_DATA)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 60)")
    p.add_argument("--w-soft", type=float, default=None)
    p.add_argument("--w-feat", type=float, default=None)

    p = sub.add_parser("lite", help="the lite multi-source recipe (MELD text, RAVDESS speech, FER2013 faces)")
    _common(p, "recipe (default configs/train_lite.yaml)")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=None,
                   help="root holding meld/, ravdess/, fer2013/ (default $MAGTKD_DATA)")
    g.add_argument("--meld", type=Path, default=None, help="MELD CSV folder (default DATA/meld)")
    g.add_argument("--ravdess", type=Path, default=None, help="RAVDESS folder with speech_16k/ (default DATA/ravdess)")
    g.add_argument("--fer", type=Path, default=None, help="FER2013 .npz folder (default DATA/fer2013)")
    _limits(g)
    g.add_argument("--stage2-limit", action="append", default=[], metavar="SOURCE[:SPLIT]=N",
                   help="at most N dialogues of a source in stage 2 only, e.g. fer2013:train=6000")
    p.add_argument("--export", type=Path, default=None, metavar="PATH",
                   help="also copy the checkpoint here (e.g. magtkd_stream/assets/lite.safetensors to ship it); "
                        "default: it stays in the run folder only")
    p.add_argument("--no-export", action="store_true", help="the default (kept so that older commands run)")
    p.add_argument("--text-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="reuse this streaming checkpoint's trained text teacher instead of fine-tuning it again")
    p.add_argument("--stage1-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="reuse every stage-1 model (text teacher, voice and face heads) of this streaming checkpoint")
    p.add_argument("--served", type=Path, action="append", default=[], metavar="DIR",
                   help="a `score-dev --vectors` output of a composed train or dev folder: stage 2 also trains "
                        "(or selects) on what the service computed there (repeatable; needs --text-from or "
                        "--stage1-from naming the checkpoint that run served)")

    p = sub.add_parser("ravdess-audio", help="RAVDESS held-out-actor scores of the lite audio branch (8 and 7 classes)")
    _common(p, "recipe whose audio encoder and stage-1 settings are used (default configs/train_lite.yaml)")
    p.add_argument("--data", type=Path, default=None, help="data root holding ravdess/ (default $MAGTKD_DATA)")
    p.add_argument("--ravdess", type=Path, default=None, help="RAVDESS folder with speech_16k/ (default DATA/ravdess)")
    p.add_argument("--cache", type=Path, default=None,
                   help="a lite run's cache folder with the Whisper vectors (e.g. runs/lite-full/cache); "
                        "default: computed and kept in this run's cache/")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", action="store_true",
                   help="also leave-actors-out cross-validation over actors 01-20 (five folds of four actors)")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="with --folds: also fit on K augmented copies of each fit clip (gain, noise, room, speed, "
                        "AAC; training/stage1/audio_augment.py) and score the same folds")

    p = sub.add_parser("parity", help="train/serve parity of the audio branch on RAVDESS actors; "
                                      "join their clips into one file for `magtkd-stream run`, or score its events")
    _common(p, "recipe whose encoders and VAD are used (default configs/train_lite.yaml)")
    p.add_argument("--data", type=Path, default=None, help="data root holding ravdess/ (default $MAGTKD_DATA)")
    p.add_argument("--ravdess", type=Path, default=None, help="RAVDESS folder with speech_16k/ (default DATA/ravdess)")
    p.add_argument("--actors", type=int, nargs="+", default=list(range(17, 21)), help="default: the dev actors 17-20")
    p.add_argument("--checkpoint", type=Path, default=None, help="score this checkpoint's audio head three ways")
    p.add_argument("--join", type=Path, default=None, metavar="DIR",
                   help="write DIR/ravdess_joined.wav (clips shuffled, 1 s apart) and its script JSON")
    p.add_argument("--events", type=Path, default=None, help="score `magtkd-stream run --out` events of the joined file")
    p.add_argument("--script", type=Path, default=None, help="the joined file's script JSON (with --events)")
    p.add_argument("--emodb", type=Path, default=None, metavar="DIR",
                   help="also score the --checkpoint's audio head on EmoDB clips in DIR (cross-corpus, German; "
                        "reported, never selected on)")

    p = sub.add_parser("compose", help="synthetic multimodal conversations with cue labels (training/devset/compose.py)")
    p.add_argument("--split", required=True, choices=("dev", "train"))
    p.add_argument("--data", type=Path, default=None, help="data root (meld/, ravdess/, fer2013/, faces_muxspace/; "
                                                           "default $MAGTKD_DATA)")
    p.add_argument("--out", type=Path, required=True, help="output folder (conv-XXX.mp4/.json, manifest.json)")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan-only", action="store_true", help="write plan.json and manifest.json only (no media)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")

    p = sub.add_parser("faces", help="face detector hit rates (Haar, BlazeFace) on muxspace photos and composed frames")
    p.add_argument("--data", type=Path, default=None, help="data root holding faces_muxspace/ (default $MAGTKD_DATA)")
    p.add_argument("--split", default="dev", choices=("dev", "train"), help="muxspace identities (default dev)")
    p.add_argument("--composed", type=Path, action="append", default=[],
                   help="a folder written by `compose` (repeatable): hit rate on its utterances' middle frames")
    p.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")

    p = sub.add_parser("face-cnn", help="fine-tune the face CNN on FER2013 train + muxspace train identities; "
                                        "select and score on the dev identities")
    p.add_argument("--data", type=Path, default=None, help="data root holding fer2013/ and faces_muxspace/ (default $MAGTKD_DATA)")
    p.add_argument("--out", type=Path, required=True, help="folder for face_cnn.safetensors and face_tune.json")
    p.add_argument("--epochs", type=int, default=None, help="default: training.stage1.face_tune.TuneSettings")
    p.add_argument("--fer-limit", type=int, default=None, help="only the first N FER2013 train faces")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")

    p = sub.add_parser("score-dev", help="run composed conversations through `magtkd-stream run` and score them")
    p.add_argument("--dev", type=Path, required=True, help="a folder written by `compose` (rendered)")
    p.add_argument("--out", type=Path, required=True, help="where events/, summary.json and confusion.png go")
    p.add_argument("--config", default="lite", help="profile for magtkd-stream (default lite)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed on to magtkd-stream (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    p.add_argument("--reuse-events", action="store_true", help="score the events already in OUT/events")
    p.add_argument("--vectors", action="store_true",
                   help="also record every utterance's encoder vectors in OUT/vectors/ (for `lite --served OUT`; "
                        "run a train composition this way)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")
    return parser


# ------------------------------------------------------------------ helpers
def _config(args: argparse.Namespace, default: Optional[str] = None) -> Config:
    ref = args.recipe
    if ref is None and args.run_dir is not None and (args.run_dir / "config.yaml").is_file():
        ref = args.run_dir / "config.yaml"
    ref = ref or default
    args.config_source = str(recipe_path(ref)) if ref is not None else None
    if ref is None:
        raise UsageError(f"{args.command}: give --recipe (e.g. configs/train_smoke.yaml) or a --run-dir with a "
                         "config.yaml")
    return load_recipe(ref, args.overrides, args.profile_override, args.seed)


def _run_folder(args: argparse.Namespace, cfg: Config, name: str) -> Any:
    from training.runs import RunFolder

    if args.run_dir is not None:
        return RunFolder(args.run_dir)
    return RunFolder.create(args.runs_root, name)


def _limits_of(args: argparse.Namespace) -> Any:
    try:
        return Limits.parse(args.limit, args.limit_per_split)
    except ValueError as exc:
        raise UsageError(f"--limit / --limit-per-split: {exc}") from None


def _exists(path: Optional[Path], flag: str, kind: str = "folder") -> Optional[Path]:
    if path is None:
        return None
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        raise UsageError(f"{flag} {path}: no such {kind}")
    return path


def load_dataset(args: argparse.Namespace, cfg: Config) -> Any:
    """The one dataset of a single-source command, subsampled by --limit*; bad paths are UsageErrors."""
    from training.data import load_iemocap, load_meld
    from training.recipe_inputs import subsample

    given = [f for f, v in (("--meld", args.meld), ("--iemocap", args.iemocap), ("--synthetic", args.synthetic))
             if v is not None]
    if len(given) != 1:
        raise UsageError(f"{args.command}: give exactly one data source (--meld DIR, --iemocap CSV or "
                         f"--synthetic DIR); got {given or 'none'}")
    source = "iemocap" if args.iemocap is not None else "meld"
    if cfg.labels != source:
        raise UsageError(f"{given[0]} gives {source} data (labels {list(label_set(source))}) but the recipe has "
                         f"labels={cfg.labels}; use a {source} recipe or --set labels={source}")
    limits = _limits_of(args)
    try:
        if args.synthetic is not None:
            root = args.synthetic
            if not (root / "train_sent_emo.csv").is_file():
                from training.data import make_synthetic_meld

                log.info("generating synthetic MELD-layout data in %s", root)
                make_synthetic_meld(root, n_dialogues=args.synthetic_dialogues, seed=cfg.seed,
                                    defects=args.synthetic_defects)
            ds = load_meld(root, clips_root=root, max_clip_s=args.max_clip_s)
        elif args.meld is not None:
            ds = load_meld(_exists(args.meld, "--meld"), clips_root=_exists(args.meld_clips, "--meld-clips"),
                           max_clip_s=args.max_clip_s)
        else:
            ds = load_iemocap(_exists(args.iemocap, "--iemocap", "file"))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    return subsample(ds, limits, cfg.seed)


def save_data_report(run: Any, ds: Any, args: argparse.Namespace) -> None:
    """What was loaded and every problem skipped on the way: metrics/data.json, and train.log.

    The data is read before the run folder exists (so a wrong path leaves none behind);
    its problems, already shown on the console, are written into the run's log here.
    """
    log.info("data %s: %s", ds.name, ds.report.summary())
    for kind, detail in ds.report.details:
        log.debug("data problem %s: %s", kind, detail)
    run.save_metrics("data", {"dataset": ds.name, "limits": _limits_of(args).to_dict(),
                              "load_report": ds.report.to_dict(),
                              "used": {s: {"dialogues": len(d), "utterances": ds.num_utterances(s)}
                                       for s, d in ds.splits.items()}})


def _kind_paths(items: Sequence[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        kind, sep, path = item.partition("=")
        if not sep or kind not in STAGE1_KINDS:
            raise UsageError(f"--stage1 {item!r}: expected KIND=CHECKPOINT with KIND one of {list(STAGE1_KINDS)}")
        out[kind] = _exists(Path(path), f"--stage1 {kind}", "file")
    return out


def _data_root(args: argparse.Namespace) -> Optional[Path]:
    root = args.data or (Path(os.environ["MAGTKD_DATA"]) if os.environ.get("MAGTKD_DATA") else None)
    return _exists(root, "--data") if root is not None else None


def _feature_dirs(run_path: Path) -> list[Path]:
    base = run_path / "features"
    if (base / "train.safetensors").is_file():
        return [base]
    subs = sorted(p for p in base.glob("*") if (p / "train.safetensors").is_file())
    if not subs:
        raise UsageError(f"no features in {base} (train.safetensors there or in its subfolders); run extract first "
                         "or give --features")
    return subs


# ------------------------------------------------------------------ commands
# Each command has a `prepare` step that reads and checks its inputs before any run
# folder exists (a wrong path leaves nothing behind), and a step that trains.
def _prepare_dataset(args: argparse.Namespace, cfg: Config) -> Any:
    if args.command == "stage1" and args.teacher is not None:
        _exists(args.teacher, "--teacher", "file")
    if args.command == "extract":
        _kind_paths(args.stage1)
    return load_dataset(args, cfg)


def _cmd_all(args: argparse.Namespace, cfg: Config, run: Any, ds: Any) -> dict[str, Any]:
    from training.recipes import run_standard

    save_data_report(run, ds, args)
    return run_standard(cfg, ds, run, resume=args.resume, export=args.export,
                        extra_report={"limits": _limits_of(args).to_dict()})


def _cmd_stage1(args: argparse.Namespace, cfg: Config, run: Any, ds: Any) -> dict[str, Any]:
    from training.recipes import stage1_model
    from training.runs import seed_everything
    from training.stage1.state import load_stage1_model

    save_data_report(run, ds, args)
    teacher = None
    if args.teacher is not None:
        seed_everything(cfg.seed)
        teacher = load_stage1_model(args.teacher, cfg=cfg)
    result = stage1_model(cfg, ds, args.modality, run, args.resume, teacher=teacher, name=args.name)
    return {k: result.metrics.get(k) for k in ("name", "best_epoch", "best_dev_weighted_f1", "checkpoint", "counts")}


def _cmd_extract(args: argparse.Namespace, cfg: Config, run: Any, ds: Any) -> dict[str, Any]:
    from training.recipes import extract_set, load_stage1_set, stage1_checkpoints

    save_data_report(run, ds, args)
    paths = _kind_paths(args.stage1) or stage1_checkpoints(run)
    if not paths:
        raise UsageError(f"no stage-1 checkpoints in {run.path}/checkpoints; train them (stage1) or pass --stage1")
    out = extract_set(cfg, ds, load_stage1_set(cfg, paths), args.out or run.path / "features",
                      cache_dir=run.path / "cache")
    return {s: str(p) for s, p in out.items()}


def _prepare_stage2(args: argparse.Namespace, cfg: Config) -> list[Path]:
    dirs = [d for d in args.features if _exists(d, "--features")]
    if not dirs and args.run_dir is None:
        raise UsageError("stage2: give --features DIR or a --run-dir holding features/")
    return dirs


def _cmd_stage2(args: argparse.Namespace, cfg: Config, run: Any, dirs: list[Path]) -> dict[str, Any]:
    from training.recipes import encoder_states_from_files, stage1_checkpoints, stream_checkpoint
    from training.stage2.train import train_stage2

    summary = train_stage2(cfg, dirs or _feature_dirs(run.path), run, resume=args.resume)
    summary["checkpoint"] = str(stream_checkpoint(run, encoder_states_from_files(stage1_checkpoints(run))))
    return summary


def _cmd_evaluate(args: argparse.Namespace, run_dir: Optional[Path]) -> dict[str, Any]:
    from magtkd_stream.model.checkpoint import load_checkpoint
    from training.stage2.features import features_path
    from training.recipes import STREAM_CHECKPOINT, evaluate_checkpoint

    ckpt = args.checkpoint
    if ckpt is None:
        if run_dir is None:
            raise UsageError("evaluate: give --checkpoint (or --run-dir holding checkpoints/stream.safetensors)")
        ckpt = run_dir / "checkpoints" / STREAM_CHECKPOINT
    _exists(ckpt, "--checkpoint", "file")
    try:
        ck = load_checkpoint(ckpt)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = load_recipe(args.recipe, args.overrides, args.profile_override, args.seed) if args.recipe else ck.config
    folders = args.features or ([run_dir / "features"] if run_dir is not None else [])
    if not folders:
        raise UsageError("evaluate: give --features (the folder with <split>.safetensors) or --run-dir")
    files = [_exists(features_path(f, args.split), f"--split {args.split}: features file", "file") for f in folders]
    windows = args.window if args.window is not None else [int(ck.extra.get("window", ck.config.magt.window))]
    if any(w < 0 for w in windows):
        raise UsageError(f"--window must be >= 0 (0 = full dialogue), got {windows}")
    return {"checkpoint": str(ckpt), "features": [str(f) for f in files], "split": args.split,
            "windows": evaluate_checkpoint(cfg, Path(ckpt), files, windows)}


def _cmd_text_style(args: argparse.Namespace) -> dict[str, Any]:
    """Typed vs ASR-style scores of a checkpoint's text teacher: how much it leans on punctuation the ASR drops."""
    from magtkd_stream.model.checkpoint import load_checkpoint
    from training.data import load_meld
    from training.metrics import compute_metrics
    from training.stage1.train import predict_stage1
    from training.stage1.state import load_stage1_model
    from training.stage1.transcript_style import TranscriptStyler

    _exists(args.checkpoint, "--checkpoint", "file")
    try:
        model = load_stage1_model(args.checkpoint, modality="text")
        ds = load_meld(_exists(args.meld, "--meld"))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    if args.split not in ds.splits:
        raise UsageError(f"--split {args.split}: MELD has {sorted(ds.splits)}")
    cfg = load_checkpoint(args.checkpoint).config
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "split": args.split}
    for style, transform in (("typed", None), ("asr_style", TranscriptStyler(1.0))):
        t, p = predict_stage1(model, cfg, ds, args.split, transform=transform)
        m = compute_metrics(t, p, list(ds.labels))
        out[style] = {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1", "per_class_f1")}
        log.info("MELD %s %s: acc %.4f wF1 %.4f mF1 %.4f", args.split, style, m["accuracy"], m["weighted_f1"],
                 m["macro_f1"])
    return out


def _prepare_paired(args: argparse.Namespace, cfg: Config) -> Path:
    npz = args.paired
    if npz is None:
        root = _data_root(args)
        npz = root / "ravdess" / "ravdess_au_mfcc_actors01-20.npz" if root is not None else None
    if npz is None:
        raise UsageError("paired: give --paired NPZ (ravdess_au_mfcc_actors01-20.npz) or --data ROOT")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    return _exists(npz, "--paired", "file")  # type: ignore[return-value]


def _cmd_paired(args: argparse.Namespace, cfg: Config, run: Any, npz: Path) -> dict[str, Any]:
    from training.stage1.array_encoder import PairedSettings, paired_summary_lines, run_paired_kd_experiment

    settings = PairedSettings() if args.epochs is None else PairedSettings(epochs=args.epochs)
    report = run_paired_kd_experiment(npz, run.path, seeds=args.seeds, w_soft=args.w_soft, w_feat=args.w_feat,
                                      settings=settings, cfg=cfg)
    for line in paired_summary_lines(report):
        log.info("%s", line)
    return report


def _prepare_lite(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    from training.lite import DEFAULT_EXPORT, LiteData
    root = _data_root(args)
    paths = {}
    for key, flag, sub in (("meld", "--meld", "meld"), ("ravdess", "--ravdess", "ravdess"),
                           ("fer", "--fer", "fer2013")):
        value = getattr(args, key) or (root / sub if root is not None else None)
        if value is None:
            raise UsageError(f"lite: no {key} data; give --data ROOT (holding meld/, ravdess/, fer2013/) or {flag} DIR")
        paths[key] = _exists(value, f"lite: {flag}")
    try:
        stage2_limits = Limits.parse(args.stage2_limit)
    except ValueError as exc:
        raise UsageError(f"--stage2-limit: {exc}") from None
    if args.no_export and args.export is not None:
        raise UsageError("lite: give --export PATH or --no-export, not both")
    export = args.export
    if export is not None and export.resolve() == DEFAULT_EXPORT.resolve():
        log.warning("lite: the run's checkpoint will replace the shipped %s", DEFAULT_EXPORT)
    return {"data": LiteData(**paths), "limits": _limits_of(args), "stage2_limits": stage2_limits, "export": export}


def _cmd_lite(args: argparse.Namespace, cfg: Config, run: Any, prep: dict[str, Any]) -> dict[str, Any]:
    from training.lite import run_lite

    try:
        return run_lite(cfg, prep["data"], run, prep["limits"], prep["stage2_limits"], prep["export"], args.resume,
                        text_from=_exists(args.text_from, "lite: --text-from", "file") if args.text_from else None,
                        stage1_from=_exists(args.stage1_from, "lite: --stage1-from", "file")
                        if args.stage1_from else None,
                        served=[_exists(d, "lite: --served") for d in args.served])
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def _prepare_ravdess_audio(args: argparse.Namespace, cfg: Config) -> Path:
    root = _data_root(args)
    folder = args.ravdess or (root / "ravdess" if root is not None else None)
    if folder is None:
        raise UsageError("ravdess-audio: give --data ROOT (holding ravdess/) or --ravdess DIR")
    if getattr(args, "cache", None) is not None:
        _exists(args.cache, "--cache")
    return _exists(folder, "ravdess-audio: --ravdess")  # type: ignore[return-value]


def _cmd_ravdess_audio(args: argparse.Namespace, cfg: Config, run: Any, folder: Path) -> dict[str, Any]:
    from training.studies.ravdess_audio import run_ravdess_audio, summary_lines

    if args.augment < 0 or (args.augment and not args.folds):
        raise UsageError("ravdess-audio: --augment K needs --folds and K >= 0")
    report = run_ravdess_audio(folder, cfg, run, args.cache or run.path / "cache", seeds=args.seeds,
                               folds=args.folds, augment=args.augment)
    for line in summary_lines(report):
        print(line)
    return report


def _prepare_parity(args: argparse.Namespace, cfg: Config) -> Path:
    if not (args.checkpoint or args.join or args.events):
        raise UsageError("parity: give --checkpoint CK, --join DIR, or --events EVENTS --script JSON")
    if args.emodb is not None:
        _exists(args.emodb, "parity: --emodb")
        if args.checkpoint is None:
            raise UsageError("parity: --emodb scores a checkpoint's audio head; give --checkpoint CK")
    if args.events is not None:
        _exists(args.events, "parity: --events", "file")
        if args.script is None:
            raise UsageError("parity: --events needs --script (the JSON written by --join)")
        _exists(args.script, "parity: --script", "file")
    if args.checkpoint is not None:
        _exists(args.checkpoint, "parity: --checkpoint", "file")
    return _prepare_ravdess_audio(args, cfg)


def _cmd_parity(args: argparse.Namespace, cfg: Config, run: Any, folder: Path) -> dict[str, Any]:
    from training.studies.parity import join_clips, run_emodb, run_parity, score_joined

    report: dict[str, Any] = {}
    if args.join is not None:
        wav, script = join_clips(folder, args.actors, args.join, cfg.seed)
        report["joined"] = {"media": str(wav), "script": str(script)}
    if args.checkpoint is not None:
        report["vectors"] = run_parity(folder, cfg, args.checkpoint, args.actors, cfg.seed)
    if args.emodb is not None:
        report["emodb"] = run_emodb(args.emodb, cfg, args.checkpoint, cfg.seed)
    if args.events is not None:
        report["stream"] = score_joined(args.events, args.script)
    run.save_metrics("parity", report)
    print(json.dumps(report, indent=2))
    return report


def _cmd_compose(args: argparse.Namespace) -> dict[str, Any]:
    from training.devset.compose import compose

    root = _data_root(args)
    if root is None:
        raise UsageError("compose: give --data ROOT (holding meld/, ravdess/, fer2013/, faces_muxspace/)")
    if args.conversations < 1:
        raise UsageError(f"--conversations must be >= 1, got {args.conversations}")
    try:
        manifest = compose(root, args.split, args.out, args.conversations, args.seed, args.plan_only)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise UsageError(f"compose: {' '.join(str(exc).split())}") from None
    print(json.dumps({k: manifest[k] for k in ("split", "seed", "count", "plan_only", "counts")}, indent=2))
    return manifest


def _cmd_face_cnn(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from training.stage1.face_tune import TuneSettings, run_face_tune

    root = _data_root(args)
    if root is None:
        raise UsageError("face-cnn: give --data ROOT (holding fer2013/ and faces_muxspace/)")
    _exists(root / "faces_muxspace", "face-cnn: --data")
    _exists(root / "fer2013", "face-cnn: --data")
    from training.runs import setup_logging

    settings = TuneSettings() if args.epochs is None else replace(TuneSettings(), epochs=args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out, args.verbose)
    report = run_face_tune(root, args.out, settings, fer_limit=args.fer_limit)
    before, after = report["before"]["muxspace-dev"], report["after"]["muxspace-dev"]
    print(f"muxspace dev identities ({before['n']} faces): accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
          f"macro F1 {before['macro_f1']:.3f} -> {after['macro_f1']:.3f} (epoch {report['selected_epoch']}); "
          f"FER2013 val accuracy {report['before']['fer2013-val']['accuracy']:.3f} -> "
          f"{report['after']['fer2013-val']['accuracy']:.3f}; wrote {args.out / 'face_cnn.safetensors'}")
    return report


def _cmd_faces(args: argparse.Namespace) -> dict[str, Any]:
    from training.studies.face_detection import composition_hits, photo_hits

    root = _data_root(args)
    if root is None:
        raise UsageError("faces: give --data ROOT (holding faces_muxspace/)")
    _exists(root / "faces_muxspace", "faces: --data")
    for c in args.composed:
        _exists(c / "manifest.json", "faces: --composed", "file")
    report = {"photos": photo_hits(root, args.split), "composed": [composition_hits(c) for c in args.composed]}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return report


def _cmd_score_dev(args: argparse.Namespace) -> dict[str, Any]:
    from training.devset.score_dev import score_dev, table

    _exists(args.dev, "--dev")
    if not (args.dev / "manifest.json").is_file():
        raise UsageError(f"--dev {args.dev}: no manifest.json (write it with `magtkd-train compose`)")
    try:
        summary = score_dev(args.dev, args.out, args.config, args.overrides, args.limit, args.reuse_events,
                            args.vectors)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"score-dev: {' '.join(str(exc).split())}") from None
    print(table(summary))
    return summary


_COMMANDS = {
    "all": (_prepare_dataset, _cmd_all), "stage1": (_prepare_dataset, _cmd_stage1),
    "extract": (_prepare_dataset, _cmd_extract), "stage2": (_prepare_stage2, _cmd_stage2),
    "paired": (_prepare_paired, _cmd_paired), "lite": (_prepare_lite, _cmd_lite),
    "ravdess-audio": (_prepare_ravdess_audio, _cmd_ravdess_audio), "parity": (_prepare_parity, _cmd_parity),
}
_DEFAULT_RECIPE = {"lite": "train_lite", "paired": "train_lite", "ravdess-audio": "train_lite", "parity": "train_lite"}


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from training.runs import setup_logging

    setup_logging(None, args.verbose)
    if args.command == "evaluate":
        if args.run_dir is not None:
            _exists(args.run_dir, "--run-dir")
        result = _cmd_evaluate(args, args.run_dir)
        if args.run_dir is not None:
            from training.runs import RunFolder

            RunFolder(args.run_dir).save_metrics(f"evaluate-{args.split}", result)
        return result
    if args.command == "text-style":
        return _cmd_text_style(args)
    if args.command == "compose":
        return _cmd_compose(args)
    if args.command == "score-dev":
        return _cmd_score_dev(args)
    if args.command == "faces":
        return _cmd_faces(args)
    if args.command == "face-cnn":
        return _cmd_face_cnn(args)
    cfg = _config(args, _DEFAULT_RECIPE.get(args.command))
    if args.resume and (args.run_dir is None or not args.run_dir.is_dir()):
        raise UsageError(f"--resume needs --run-dir naming an existing run folder (got {args.run_dir})")
    prepare, train = _COMMANDS[args.command]
    inputs = prepare(args, cfg)
    recipe_name = Path(args.recipe).stem if args.recipe else "run"
    run = _run_folder(args, cfg, f"{args.command}-{recipe_name}")
    setup_logging(run.path, args.verbose)
    run.write_config(cfg)
    log.info("magtkd-train %s: run folder %s (profile %s, seed %d, config %s)", args.command, run.path, cfg.profile,
             cfg.seed, getattr(args, "config_source", None))
    result = train(args, cfg, run, inputs)
    log.info("done: %s", run.path)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = _run(args)
    except (UsageError, ConfigError) as exc:
        print(f"magtkd-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magtkd-train: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the entry point reports any failure and exits non-zero
        log.exception("magtkd-train %s failed", args.command)
        return 1
    if args.command in ("evaluate", "stage1", "extract", "text-style"):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
