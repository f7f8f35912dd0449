"""What each `magtkd-train` subcommand does: its inputs checked first (exit 2 naming the problem), then the work."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from magtkd_stream.config import Config
from magtkd_stream.labels import label_set
from training.cli_parser import STAGE1_KINDS
from training.recipe_inputs import Limits, load_recipe, recipe_path

log = logging.getLogger("training.cli")


class UsageError(Exception):
    """The command line, the recipe or a data path is wrong: reported in one line, exit code 2."""


# ------------------------------------------------------------------ arguments


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


def _cmd_decision(args: argparse.Namespace) -> dict[str, Any]:
    from training.stage2.decision import run_decision

    _exists(args.checkpoint, "decision: --checkpoint", "file")
    for folder in (*args.served, *args.select):
        _exists(folder / "summary.json", "decision: --served/--select", "file")
    if args.out.resolve() == args.checkpoint.resolve():
        raise UsageError("decision: --out must differ from --checkpoint (the served runs name that file's digest)")
    try:
        summary = run_decision(args.checkpoint, args.served, args.select, args.out, args.report)
    except ValueError as exc:
        raise UsageError(f"decision: {' '.join(str(exc).split())}") from None
    print(json.dumps({k: v for k, v in summary.items() if k != "grid"}, indent=2))
    return summary


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


def _cmd_diarization(args: argparse.Namespace) -> dict[str, Any]:
    from training.studies.diarization import diarization_study

    root = _data_root(args)
    if root is None:
        raise UsageError("diarization: give --data ROOT (holding speakers/ and diarization/)")
    try:
        for c in args.composed:
            _exists(c / "manifest.json", "diarization: --composed", "file")
        report = diarization_study(root, args.out, args.overrides, args.config, args.conversations, args.seed,
                                   args.composed, args.split_only)
    except FileNotFoundError as exc:
        raise UsageError(f"diarization: {exc}") from None
    print(json.dumps({k: v for k, v in report.items() if "sweep" not in k}, indent=2))
    return report
