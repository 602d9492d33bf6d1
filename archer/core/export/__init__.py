"""Finding checkpoints (local engine or verl FSDP) and exporting them as Hugging Face model folders.

`checkpoints` locates what a path holds (a run directory, a checkpoint folder, a plain model
folder) and loads models from it; `exporter` writes the Hugging Face folder (verl's own model
merger for FSDP shards) and checks it against the checkpoint before putting it in place.
"""
