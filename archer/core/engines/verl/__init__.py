"""The verl 0.9.1 engine, entered as a plugin (never a fork).

- plugin.py       registers archer's losses, estimators and the `archer_sync` trainer in verl
- losses.py       archer's policy losses behind verl's signature; the worker's loss wrapper
- estimators.py   archer's advantage estimators behind verl's signature
- capture.py      influence capture inside verl's training worker (positions, loss normaliser)
- worker.py       `ArcherTrainingWorker` / `ArcherActorRolloutRefWorker`
- steps.py        the driver's per-step rows: influence plan, trace table (pure functions)
- trainer.py      `ArcherTrainer` (`archer_sync`): V1 trainer + plan, capture results, trace
- config.py       archer config -> verl config (Hydra compose API), validation, the plan
- runner.py       archer's own Ray task runner (verl's `TaskRunnerV1` cannot be subclassed)
- launch.py       `archer train` for `engine: verl`, and its `--dry-run`

Importing this package imports nothing heavy; the modules import verl, Ray and torch themselves.
"""
