"""archer's verl workers: verl's `TrainingWorker` with the influence recorder and archer's loss
wrapper, and the `ActorRolloutRefWorker` whose actor is that worker.

The trainer calls `archer_setup` once (every rank) after the engines are built; the recorder's
hooks are registered then, on the actor engine's module only (the reference model is a plain
`TrainingWorker` and is never hooked), and they capture only inside `train_mini_batch`, never
during `infer_batch` / `compute_log_prob`. `archer_take_influence` returns each rank's scores.
"""

from __future__ import annotations

from typing import Any

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from archer.core.engines.verl import plugin
from archer.core.engines.verl.capture import WorkerInfluence, influence_group
from archer.core.engines.verl.losses import ArcherLoss

plugin.register()  # the worker's process needs archer's losses even without the entry point


class ArcherTrainingWorker(TrainingWorker):
    """verl's training worker + archer's loss wrapper + the influence recorder."""

    _archer_knobs: dict = {}
    _archer_influence: WorkerInfluence | None = None
    _archer_result: Any = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_loss_fn(self, loss_fn):
        base = loss_fn.base if isinstance(loss_fn, ArcherLoss) else loss_fn
        self.loss_fn = ArcherLoss(base, self._archer_knobs)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def archer_setup(self, payload: dict) -> dict:
        """Install archer's loss knobs and, when influence is on, the recorder's hooks."""
        from archer.influence.settings import InfluenceSettings

        self._archer_knobs = dict(payload.get("loss_knobs") or {})
        if self.loss_fn is not None:
            self.set_loss_fn(self.loss_fn)
        influence = payload.get("influence")
        if influence and self._archer_influence is None:
            if getattr(self.engine, "ulysses_sequence_parallel_size", 1) > 1:
                raise ValueError(
                    "influence capture needs ulysses_sequence_parallel_size=1 (sequence parallelism "
                    "slices the packed tokens across ranks)"
                )
            config = self.loss_fn.config if isinstance(self.loss_fn, ArcherLoss) else None
            self._archer_influence = WorkerInfluence(
                self.engine.module,
                InfluenceSettings.from_mapping(influence),
                loss_agg_mode=str(getattr(config, "loss_agg_mode", "token-mean")),
                loss_scale_factor=getattr(config, "loss_scale_factor", None),
                group=influence_group(self.engine.get_data_parallel_group()),
            )
            original = self.engine.forward_step

            def forward_step(micro_batch, loss_function, forward_only):
                if not forward_only and self._archer_influence is not None:
                    self._archer_influence.before_forward(micro_batch)
                return original(micro_batch, loss_function=loss_function, forward_only=forward_only)

            self.engine.forward_step = forward_step
        recorder = self._archer_influence.tracer.recorder if self._archer_influence else None
        return {
            "influence_modules": list(recorder.names) if recorder else [],
            "loss_mode": self.loss_fn.loss_mode if isinstance(self.loss_fn, ArcherLoss) else None,
        }

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_mini_batch(self, data):
        if isinstance(self.loss_fn, ArcherLoss) and self.loss_fn.needs_entropy:
            tu.assign_non_tensor(data, calculate_entropy=True)
        capture = self._archer_influence
        if capture is None or not tu.get_non_tensor_data(data=data, key="archer_influence", default=False):
            return super().train_mini_batch(data)
        capture.begin(data, self._mini_batches_per_epoch(data))
        try:
            if not capture.output.in_training_backward:  # other output functions than training_loss
                self._inject_engine_defaults(data)
                capture.separate_backward(self.engine, data)
            output = super().train_mini_batch(data)
        except BaseException:
            capture.abort()
            raise
        self._archer_result = capture.finish()
        return output

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_batch(self, data):
        try:
            return super().train_batch(data)
        finally:
            if self._archer_influence is not None and self._archer_influence.active:
                self._archer_influence.end_mini_batch()

    def _inject_engine_defaults(self, data) -> None:
        """The engine keys verl's `train_batch` sets before it runs the engine (same values), so the
        separate pass batches its micro-batches as the update will."""
        defaults = dict(
            use_remove_padding=self.model_config.get("use_remove_padding", False),
            use_dynamic_bsz=self.engine_config.use_dynamic_bsz,
            max_token_len_per_gpu=self.engine_config.max_token_len_per_gpu,
            micro_batch_size_per_gpu=self.engine_config.micro_batch_size_per_gpu,
            use_fused_kernels=self.engine_config.use_fused_kernels,
        )
        for key, val in defaults.items():
            if key not in data.keys():
                tu.assign_non_tensor(data, **{key: val})

    def _mini_batches_per_epoch(self, data) -> int:
        size = int(data.shape[0])
        mini = tu.get_non_tensor_data(data=data, key="mini_batch_size", default=None)
        if mini is None:
            return int(tu.get_non_tensor_data(data=data, key="num_mini_batch", default=1))
        return max(1, size // (int(mini) // self.engine.get_data_parallel_size()))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def archer_take_influence(self) -> Any:
        """This rank's ({row: float32 scores}, metrics) of the last update, or None."""
        result, self._archer_result = self._archer_result, None
        return result


class ArcherActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker whose actor is `ArcherTrainingWorker`."""

    actor_worker_cls = ArcherTrainingWorker

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def archer_setup(self, payload: dict) -> dict | None:
        return self.actor.archer_setup(payload) if self.actor is not None else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def archer_take_influence(self) -> Any:
        return self.actor.archer_take_influence() if self.actor is not None else None

    @register(dispatch_mode=Dispatch.DIRECT_ROLLOUT_METHOD)
    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict,
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The `hf` rollout's server entry: verl binds this method, unprefixed, onto the colocated
        worker actor, which `HFReplica` hands to the agent loop as its server handle."""
        from archer.core.engines.verl.rollout_hf import HFRollout

        if not isinstance(getattr(self, "rollout", None), HFRollout):
            raise RuntimeError(
                "generate() is the hf rollout's entry; this worker rolls out with another backend"
            )
        if image_data is not None or video_data is not None:
            raise ValueError("the hf rollout is text-only")
        return await self.rollout.generate(prompt_ids, sampling_params, request_id)
