"""The local engine: one process, CPU or one GPU (see trainer.py)."""
