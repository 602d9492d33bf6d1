"""archer's Ray task runner: what verl's `TaskRunnerV1.run` does, in archer's own actor class.

`TaskRunnerV1` is a Ray ActorClass and cannot be subclassed (Ray raises
ActorClassInheritanceException), so its ~30 lines are reproduced here. Two differences: the
trainer is always archer's `archer_sync` (imported, so registered, whatever the plugin route),
while the config's `trainer.v1.trainer_mode` stays `sync`, the mode verl's own code branches on
(any other value sends verl down its async replay-buffer and checkpoint paths), and
`pinned_runner` places the actor on the driver's node, where the run directory (and so the trace,
written by the trainer inside this actor) lives.
"""

from __future__ import annotations

from pprint import pprint
from typing import Any

import ray


@ray.remote(num_cpus=1)
class ArcherTaskRunner:
    """Runs one verl training job: TransferQueue, the trainer, the agent-loop manager, fit."""

    def __init__(self) -> None:
        self.config = None
        self.trainer = None
        self.agent_loop_manager = None

    def init_agent_loop_manager(self) -> None:
        from verl.trainer.ppo.v1 import AgentLoopManagerTQ
        from verl.utils.import_utils import load_class_from_fqn

        fqn = self.config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
        manager_cls = load_class_from_fqn(fqn, "AgentLoopManager") if fqn else AgentLoopManagerTQ
        self.agent_loop_manager = manager_cls.create(
            config=self.config,
            llm_client=self.trainer.get_llm_client(),
            teacher_client=self.trainer.get_teacher_client(),
            reward_loop_worker_handles=self.trainer.get_reward_handles(),
        )

    def run(self, config: Any) -> None:
        import transfer_queue as tq
        from omegaconf import OmegaConf
        from verl.trainer.ppo.v1 import get_trainer_cls
        from verl.utils.logging_utils import configure_verl_logging

        from archer.core.engines.verl import plugin

        configure_verl_logging()
        plugin.register()
        plugin.register_trainer()
        from archer.core.engines.verl.config import ARCHER_TRAINER

        trainer_cls = get_trainer_cls(ARCHER_TRAINER)  # the config's mode stays verl's "sync"
        config.transfer_queue.enable = True
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)
        self.config = config
        tq.init(config.transfer_queue)
        succeeded = False
        try:
            self.trainer = trainer_cls(config=config)
            self.trainer.init()
            self.init_agent_loop_manager()
            self.trainer.fit(self.agent_loop_manager)
            succeeded = True
        finally:
            stop_dataloader_workers(self.trainer)
            try:
                tracking = getattr(self.trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def stop_dataloader_workers(trainer: Any) -> None:
    """End the worker processes of the trainer's live train-data iterator (verl keeps it in
    `train_dataloader_it` between steps). Left running, they are killed by Ray with this actor while
    torch's SIGCHLD handler is still armed here, and a run that succeeded ends with a "DataLoader
    worker ... is killed by signal: Killed" traceback (seen on the GPU, where verl's default is 8
    workers)."""
    it = getattr(trainer, "train_dataloader_it", None)
    if it is None:
        return
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    trainer.train_dataloader_it = None


class pinned_runner:
    """What verl's `run_ppo` takes as `task_runner_class`: it calls `.remote()` (or
    `.options(...).remote()`); both place `ArcherTaskRunner` on the node of the driver."""

    @staticmethod
    def _strategy() -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)

    @classmethod
    def remote(cls) -> Any:
        return ArcherTaskRunner.options(scheduling_strategy=cls._strategy()).remote()

    @classmethod
    def options(cls, **kwargs: Any) -> Any:
        return ArcherTaskRunner.options(scheduling_strategy=cls._strategy(), **kwargs)
