"""Recognition of a live stream: VAD, ASR, the per-session core, the Recognizer, its backends and replay."""
