"""The MAGTKD model: anchor-gated blocks and MAGT, the KD losses, the prompt, fusion heads and checkpoints."""
