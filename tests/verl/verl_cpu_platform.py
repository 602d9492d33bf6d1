"""The tests' route to archer's CPU platform for verl (archer/core/engines/verl/cpu_platform.py),
forced on so the verl tests also run on a machine with a GPU. Ray workers load it through
`VERL_USE_EXTERNAL_MODULES=verl_cpu_platform` (with this folder on PYTHONPATH). Import it before
any `verl.workers.*` module."""

from archer.core.engines.verl.cpu_platform import activate

activate(force=True)
