"""Stage 1: the prompted text teacher, the audio and video students (with KD), their inputs and caches."""
