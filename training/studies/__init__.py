"""One-off measurements and tools: train/serve parity, the RAVDESS voice study, face detection, conversions."""
