"""Backbone vectors of augmented copies of speech clips, computed once and cached like the clean ones.

Copy k of a speaker's clips goes through one channel drawn for (seed, speaker,
k) (training/stage1/audio_augment.py), then through the service's VAD cut
(served_clip) and the frozen encoder, exactly as a clean clip does. A clip
that cannot be decoded is skipped and reported absent, as in stage 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import AudioInput, Encoder
from training.stage1.audio_augment import AugmentSettings, apply_channel, copy_rng
from magtkd_stream.media import MediaError, load_audio
from training.stage1.cache import Encoded, backbone_fingerprint, model_device, read_cached, write_cached
from training.stage1.inputs import UttRef, served_clip, to_device

logger = logging.getLogger(__name__)


def _clip_rng(seed: int, copy: int, uid: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}/{copy}/{uid}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def augmented_input(ref: UttRef, cfg: Config, settings: AugmentSettings, seed: int, copy: int) -> AudioInput:
    """One clip through its speaker's k-th channel, then cut as the service cuts it."""
    utt = ref.utt
    assert utt.audio is not None
    sr = cfg.encoders.audio.sample_rate
    channel = settings.draw(copy_rng(seed, utt.speaker or "", copy))
    wave = apply_channel(load_audio(utt.audio, sr=sr), channel, _clip_rng(seed, copy, utt.uid), sr)
    return AudioInput(served_clip(wave, cfg) if cfg.train.vad_audio else wave)


def augmented_backbone(encoder: Encoder, refs: Sequence[UttRef], cfg: Config, copy: int, seed: int,
                       settings: AugmentSettings, cache_dir: Optional[Path], name: str,
                       batch_size: int = 16) -> Encoded:
    """Vectors (N, dim) of copy `copy` of every ref; read from / written to cache_dir when it is set."""
    path = None
    if cache_dir is not None:
        desc = json.dumps({"settings": settings.__dict__, "seed": seed, "copy": copy,
                           "base": backbone_fingerprint(encoder, "audio", refs, cfg)}, sort_keys=True, default=str)
        path = Path(cache_dir) / f"{name}-aug{copy}-{hashlib.sha1(desc.encode()).hexdigest()[:16]}.npz"
        cached = read_cached(path, (len(refs), encoder.dim), f"{name} copy {copy}")
        if cached is not None:
            return cached[0]
    device = model_device(encoder)
    vectors = torch.zeros(len(refs), encoder.dim)
    ok = torch.zeros(len(refs), dtype=torch.bool)
    rows = [i for i, r in enumerate(refs) if r.utt.audio is not None]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                good, items = [], []
                for i in rows[start: start + batch_size]:
                    try:
                        items.append(augmented_input(refs[i], cfg, settings, seed, copy))
                        good.append(i)
                    except MediaError as exc:
                        logger.warning("%s copy %d: %s skipped: %s", name, copy, refs[i].utt.uid, exc)
                if not items:
                    continue
                out = encoder(**to_device(encoder.collate(items), device))
                idx = torch.tensor(good, dtype=torch.long)
                vectors[idx] = out.vectors.float().cpu()
                ok[idx] = out.present.cpu()
    finally:
        encoder.train(was_training)
    logger.info("%s copy %d: %d of %d clips encoded", name, copy, int(ok.sum()), len(refs))
    enc = Encoded(vectors=vectors, ok=ok)
    if path is not None:
        write_cached(path, enc)
    return enc


def augmented_ref(ref: UttRef, copy: int) -> UttRef:
    """The same clip as copy `copy`: a speaker (session) and uid of its own, everything else shared."""
    utts = list(ref.dialogue.utterances)
    utt = utts[ref.pos]
    utts[ref.pos] = dataclasses.replace(utt, uid=f"{utt.uid}@aug{copy}", speaker=f"{utt.speaker}@aug{copy}")
    return UttRef(dataclasses.replace(ref.dialogue, did=f"{ref.dialogue.did}@aug{copy}", utterances=utts), ref.pos)


def augment_split(encoder: Encoder, refs: list[UttRef], rows: list[int], enc: Encoded, cfg: Config, copies: int,
                  cache_dir: Optional[Path], name: str) -> tuple[list[int], Encoded]:
    """Append `copies` augmented copies of the rows' clips to `refs` (in place); the rows and vectors with them.

    `enc` holds the vectors of `rows` in order (as stage 1 keeps them); copies of
    rows without audio are left out.
    """
    sub = [refs[i] for i in rows]
    settings = AugmentSettings()
    all_rows, parts, oks = list(rows), [enc.vectors], [enc.ok]
    for k in range(copies):
        aug = augmented_backbone(encoder, sub, cfg, k, cfg.seed, settings, cache_dir, name)
        keep = [j for j in range(len(sub)) if bool(enc.ok[j]) and bool(aug.ok[j])]
        start = len(refs)
        refs.extend(augmented_ref(sub[j], k) for j in keep)
        all_rows.extend(range(start, len(refs)))
        parts.append(aug.vectors[keep])
        oks.append(aug.ok[keep])
    return all_rows, Encoded(torch.cat(parts), torch.cat(oks))
