"""Demo clients of magtkd_stream (webcam/microphone client, browser page) and the sample media script."""
