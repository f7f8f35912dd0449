"""PipelineSink: the gateway's SessionSink over the Ray actors, a Recognizer whose backend is a Pipeline."""

from __future__ import annotations

import time
from typing import Callable, Optional

from actors.pipeline import Pipeline
from magtkd_stream.streaming.recognizer import PublishFn, Recognizer, TapFn


class PipelineSink(Recognizer):
    """A Recognizer over the running Ray pipeline; `pipeline` is kept for health, stats and fault tests."""

    def __init__(self, pipeline: Pipeline, publish: Optional[PublishFn] = None, clock: Callable[[], float] = time.time,
                 vad_threads: int = 2, tap: Optional[TapFn] = None) -> None:
        super().__init__(pipeline, publish, clock=clock, vad_threads=vad_threads, tap=tap)
        self.pipeline = pipeline
