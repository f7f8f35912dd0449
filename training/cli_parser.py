"""`magtkd-train`'s command line: every subcommand and its flags (see training/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from magtkd_stream.names import MODALITIES

STAGE1_KINDS = ("text", "audio", "video", "audio_kd", "video_kd")


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

    p = sub.add_parser("diarization", help="speaker attribution and diarization error rate of `magtkd-stream run` "
                                           "on LibriSpeech conversations and the AMI fixtures")
    p.add_argument("--data", type=Path, default=None, help="data root holding speakers/ and diarization/ "
                                                           "(default $MAGTKD_DATA)")
    p.add_argument("--out", type=Path, required=True, help="folder for diarization.json, the media and events")
    p.add_argument("--config", default="lite", help="profile for magtkd-stream (default lite)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed on to magtkd-stream (repeatable)")
    p.add_argument("--conversations", type=int, default=12, help="per LibriSpeech set (default 12)")
    p.add_argument("--composed", type=Path, action="append", default=[],
                   help="a `compose --split dev` folder whose utterances are swept too (repeatable)")
    p.add_argument("--split-only", action="store_true",
                   help="only the sweep of the threshold that cuts a segment where the voice changes (no product runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on the console")

    p = sub.add_parser("decision", help="fit the decision layer (MAGT weighed against each modality's head) on "
                                        "served train compositions; choose it on a served dev one")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint that served the runs")
    p.add_argument("--served", type=Path, action="append", required=True,
                   help="a `score-dev --vectors` run of a train composition (repeatable): the layer is fitted on it")
    p.add_argument("--select", type=Path, action="append", required=True,
                   help="a `score-dev --vectors` run of a dev composition (repeatable): the layer is chosen on it")
    p.add_argument("--out", type=Path, required=True, help="the extended checkpoint (.safetensors) to write")
    p.add_argument("--report", type=Path, default=None, help="also write the fit's report as JSON here")
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
