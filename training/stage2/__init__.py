"""Stage 2: utterance features, pairing and composed dialogues, MAGT training, calibration, served vectors."""
