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
    magtkd-train diarization --data ../shared/data --out runs/diarization   (who speaks: attribution, DER)
    magtkd-train decision --checkpoint CK --served runs/train-served --select runs/dev-served --out CK2

A recipe is a configuration file that starts from a profile (`base: lite`) and adds `train:`;
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
from typing import Any, Sequence

from magtkd_stream.config import ConfigError
from training.cli_commands import (
    UsageError,
    _cmd_all,
    _cmd_compose,
    _cmd_decision,
    _cmd_diarization,
    _cmd_evaluate,
    _cmd_extract,
    _cmd_face_cnn,
    _cmd_faces,
    _cmd_lite,
    _cmd_paired,
    _cmd_parity,
    _cmd_ravdess_audio,
    _cmd_score_dev,
    _cmd_stage1,
    _cmd_stage2,
    _cmd_text_style,
    _config,
    _exists,
    _prepare_dataset,
    _prepare_lite,
    _prepare_paired,
    _prepare_parity,
    _prepare_ravdess_audio,
    _prepare_stage2,
    _run_folder,
)
from training.cli_parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]

log = logging.getLogger("training.cli")


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
    if args.command == "decision":
        return _cmd_decision(args)
    if args.command == "diarization":
        return _cmd_diarization(args)
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
