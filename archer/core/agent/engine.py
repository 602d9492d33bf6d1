"""The local engine's agent mode: tools, rollouts, validation and warm-up demonstrations.

`LocalTrainer` owns one `AgentRunner` when `agent.enable`; it asks it for the step's rollout (an
engine `Rollout` whose `loss_mask` is 0 on tool-result tokens, plus the per-token roles the trace
stores as `token_role`), for validation, and for the tool-use demonstrations of the warm-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from archer.core.agent.branching import BranchSettings
from archer.core.agent.protocol import ROLE_MODEL, ROLE_TOOL_CALL, ROLE_TOOL_RESULT, TOOL_TAGS, final_answer
from archer.errors import ConfigError

TOOL_TASKS = ("tool_arithmetic", "corpus_qa", "tool_mix")


def check_config(cfg: Any) -> None:
    """Agent-mode rules the schema cannot express; ConfigError with a hint."""
    a = cfg.agent
    n = int(cfg.rollout.n)
    if cfg.engine == "verl":
        check_verl(cfg)
    if a.initial_rollouts > n:
        raise ConfigError(
            f"agent.initial_rollouts ({a.initial_rollouts}) must be <= rollout.n ({n}), the "
            "per-prompt budget",
            hint=f"set agent.initial_rollouts={max(1, n // 2)}",
        )
    if cfg.algorithm.filter_groups.enable:
        raise ConfigError(
            "algorithm.filter_groups is not supported with agent.enable",
            hint="drop it: ~algorithm.filter_groups.enable",
        )
    p = a.tools.python
    if p.sandbox_fusion_url and p.backend != "sandbox_fusion":
        raise ConfigError(
            "agent.tools.python.sandbox_fusion_url is set, but the python tool runs locally "
            f"(agent.tools.python.backend={p.backend})",
            hint="add agent.tools.python.backend=sandbox_fusion, or drop the URL",
        )
    if p.backend == "sandbox_fusion" and not p.sandbox_fusion_url:
        raise ConfigError(
            "agent.tools.python.backend=sandbox_fusion needs the server's run_code URL",
            hint="set agent.tools.python.sandbox_fusion_url=http://HOST:8080/run_code",
        )
    if not (a.tools.python.enable or a.tools.search.enable):
        raise ConfigError("agent.enable with no tool enabled", hint="set agent.tools.python.enable=true")
    if cfg.model.path is None:
        need = int(cfg.data.max_prompt_length) + int(cfg.rollout.max_new_tokens)
        if need > int(cfg.model.tiny.max_position_embeddings):
            raise ConfigError(
                f"data.max_prompt_length + rollout.max_new_tokens = {need} exceeds "
                "model.tiny.max_position_embeddings "
                f"({cfg.model.tiny.max_position_embeddings})",
                hint=f"set model.tiny.max_position_embeddings={need}",
            )


def check_verl(cfg: Any) -> None:
    """What archer's verl agent loop (a per-prompt server rollout, docs/agentic.md) runs today."""
    if cfg.rollout.backend not in ("hf", "vllm"):
        raise ConfigError(
            f"agent.enable on verl rolls out with vllm or archer's hf backend, not {cfg.rollout.backend}: "
            "the branching rule needs per-token entropies, which archer's vLLM server (top-k log-probs) "
            "and the hf replica return and verl's other servers do not",
            hint="add rollout.backend=vllm (GPU) or rollout.backend=hf, or run engine=local",
        )
    if int(cfg.agent.entropy_topk) < 1:
        raise ConfigError(
            "agent.entropy_topk=0 (the full entropy) runs on the local engine only: verl's rollout "
            "servers return each token's top-k entropy (vLLM sends k log-probs, never the whole softmax)",
            hint="set agent.entropy_topk=10 (ARPO's vLLM logprobs), or run engine=local",
        )


def prepare_task_data(cfg: Any, data_dir: Path) -> None:
    """Write the synthetic tool task (and its corpus) when data.synth.task is one and no files are given."""
    if cfg.data.train_files or cfg.data.synth.task not in TOOL_TASKS:
        return
    from archer.core.data import TRAIN_FILE, VAL_FILE
    from archer.core.data.synth import write_tool_task

    if (data_dir / TRAIN_FILE).exists() and (data_dir / VAL_FILE).exists():
        return
    s = cfg.data.synth
    write_tool_task(
        data_dir,
        task=s.task,
        n=int(s.n),
        val_n=int(s.val_n),
        seed=int(cfg.seed),
        max_operand=int(s.max_operand),
    )


def tool_call_for(prompt_text: str, data_source: str) -> tuple[str, str] | None:
    """The call a demonstration makes for a synthetic tool prompt (None: answer directly)."""
    if data_source == "tool_arithmetic" and prompt_text.endswith("="):
        return "python", prompt_text[:-1]
    if data_source == "corpus_qa" and " of " in prompt_text:
        thing, _, name = prompt_text.rstrip("?").partition(" of ")
        return "search", f"{name} {thing}"
    return None


def branch_settings(a: Any, n: int, *, validation: bool = False) -> BranchSettings:
    """The `agent.*` section as the branching rule's settings (validation: n plain rollouts)."""
    if validation:
        return BranchSettings(n=n, initial_rollouts=n, mode="none")
    return BranchSettings(
        n=n,
        initial_rollouts=int(a.initial_rollouts),
        beam_size=int(a.beam_size),
        branch_probability=float(a.branch_probability),
        entropy_weight=float(a.entropy_weight),
        entropy_tokens=int(a.entropy_tokens),
        entropy_topk=int(a.entropy_topk),
        mode=str(a.algorithm),
        refill=str(a.refill),
        consecutive_penalty=float(a.aepo.consecutive_penalty),
        dynamic_rollouts=bool(a.aepo.dynamic_rollouts),
        consecutive_count=str(a.aepo.consecutive_count),
    )


def build_tools(
    a: Any, run_dir: Path, cache_dir: Path, *, needs_corpus: bool = False
) -> tuple[Any, Path | None, dict]:
    """The run's tools from the `agent.tools` section: (ToolBox, search corpus or None, the python
    sandbox's probe). The search corpus defaults to the synthetic task's `<run>/data/corpus.parquet`;
    its shared cache to `cache_dir/search/`. Both engines' agent loops call this (on verl, in each
    agent-loop worker)."""
    from archer.core.tools import PythonSandbox, SandboxLimits, ToolBox

    python = None
    if a.tools.python.enable:
        p = a.tools.python
        limits = SandboxLimits(
            timeout_s=float(p.timeout_s),
            cpu_s=int(p.cpu_s),
            memory_mb=int(p.memory_mb),
            max_processes=int(p.max_processes),
            max_file_mb=int(p.max_file_mb),
            max_output_chars=int(p.max_output_chars),
        )
        if str(p.get("backend", "local")) == "sandbox_fusion":  # the cluster's server runs the code
            from archer.core.tools.sandbox_fusion import SandboxFusionPython

            python = SandboxFusionPython(p.sandbox_fusion_url, limits, cache_size=int(p.cache_size))
        else:
            python = PythonSandbox(limits, isolation=str(p.isolation), cache_size=int(p.cache_size))
    search = None
    corpus_path: Path | None = None
    if a.tools.search.enable:
        corpus = a.tools.search.corpus
        if corpus is None and (Path(run_dir) / "data" / "corpus.parquet").exists():
            corpus = str(Path(run_dir) / "data" / "corpus.parquet")
        if corpus is None and needs_corpus:
            raise ConfigError("the search tool has no corpus", hint="set agent.tools.search.corpus")
        if corpus is not None:
            from archer.core.tools.search import SearchTool, default_cache_path

            corpus_path = Path(corpus)
            cache = a.tools.search.cache_path or default_cache_path(cache_dir, corpus)
            search = SearchTool(
                corpus,
                top_k=int(a.tools.search.top_k),
                max_chars=int(a.tools.search.max_chars),
                cache_path=cache,
            )
    toolbox = ToolBox(python, search, workers=int(a.tools.workers))
    return toolbox, corpus_path, (python.probe() if python is not None else {})


class AgentRunner:
    """Tools and rollout settings of one run."""

    def __init__(self, cfg: Any, tokenizer: Any, run_dir: Path, cache_dir: Path, device: Any):
        check_config(cfg)
        self.cfg = cfg
        self.note: Callable[[str], None] = lambda text: None  # the trainer's reporter.note
        self.tokenizer = tokenizer
        self.device = device
        needs_corpus = cfg.data.synth.task in ("corpus_qa", "tool_mix") and not cfg.data.train_files
        self.toolbox, self.corpus, self.isolation = build_tools(
            cfg.agent, run_dir, cache_dir, needs_corpus=needs_corpus
        )

    def describe(self) -> str:
        tools = ", ".join(self.toolbox.available)
        iso = self.isolation.get("isolation", "n/a")
        mech = "+".join(self.isolation.get("mechanisms", []))
        line = f"agent: {self.cfg.agent.algorithm} · tools {tools} · python sandbox {iso} ({mech})"
        if self.isolation.get("unsafe"):  # the user's opt-in, repeated at every start
            line += (
                "\n[bold red]warning: agent.tools.python.isolation=none: model-written code runs "
                "WITHOUT isolation, with your user's rights (docs/security.md)[/bold red]"
            )
        return line

    def branch_settings(self, *, n: int | None = None, validation: bool = False) -> BranchSettings:
        return branch_settings(self.cfg.agent, int(n or self.cfg.rollout.n), validation=validation)

    def rollout(
        self,
        model: Any,
        prompts: Sequence[Any],
        *,
        seed: int,
        validation: bool = False,
        n: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> Any:
        """Run the agent on `prompts`; returns (Rollout, roles, texts, answers, AgentBatch)."""
        from archer.core.agent.decoder import HFDecoder
        from archer.core.agent.rollout import AgentRollout, SamplingSettings, response_texts, to_rollout
        from archer.core.rollout.generation import eos_token_ids

        r = self.cfg.rollout
        sampling = SamplingSettings(
            temperature=float(r.temperature if temperature is None else temperature),
            top_p=float(r.top_p if top_p is None else top_p),
            top_k=int(r.top_k),
            max_response_tokens=int(r.max_new_tokens),
            max_turns=int(self.cfg.agent.max_turns),
        )
        pad = int(self.tokenizer.pad_token_id)
        was_training = model.training
        model.eval()
        try:
            runner = AgentRollout(
                HFDecoder(model, pad, self.device),
                self.tokenizer,
                self.toolbox,
                self.branch_settings(n=n, validation=validation),
                sampling,
                eos_ids=eos_token_ids(model, self.tokenizer),
                seed=seed,
                vocab_size=int(model.config.vocab_size),
            )
            batch = runner.run([p.ids for p in prompts])
        finally:
            model.train(was_training)
        ro, roles = to_rollout(batch, [p.ids for p in prompts], pad)
        texts = response_texts(self.tokenizer, batch)
        return ro, roles, texts, [final_answer(t) for t in texts], batch

    def step_metrics(self, batch: Any) -> dict[str, float]:
        out = dict(batch.stats)
        for k, v in self.toolbox.take_counts().items():
            out[f"agent/tool/{k}"] = v
        return out

    def validate(self, model: Any, prompts: Sequence[Any], *, seed: int) -> dict[str, float]:
        from archer.core.rewards import score_batch

        if not prompts:
            return {}
        v = self.cfg.rollout.val
        n = int(v.n)
        ro, _, _, answers, batch = self.rollout(
            model,
            prompts,
            seed=seed,
            validation=True,
            n=n,
            temperature=float(v.temperature),
            top_p=float(v.top_p),
        )
        gold = [prompts[t.group].answer for t in batch.trajectories]
        scores = score_batch(
            self.cfg.reward.function, answers, gold, timeout_s=float(self.cfg.reward.timeout_s)
        )
        self.toolbox.take_counts()
        correct = np.array([s.correct for s in scores], dtype=float)
        out = {
            "val/accuracy": float(correct.mean()),
            "val/reward_mean": float(np.mean([s.reward for s in scores])),
            "val/response_length": float(ro.response_lengths.float().mean()),
            "val/prompts": float(len(prompts)),
            "val/tool_calls_mean": float(np.mean([t.turns for t in batch.trajectories])),
        }
        if n > 1:
            out[f"val/pass@{n}"] = float(correct.reshape(-1, n).max(1).mean())
        return out

    def demonstrations(self, prompts: Sequence[Any]) -> list[list[tuple[str, int]]]:
        """Tool-use demonstrations (spans of text and role) built by calling the real tools, so the
        warm-up shows exactly the results the model will see during RL."""
        from archer.core.agent.protocol import demonstration

        texts = [self.tokenizer.decode(p.ids, skip_special_tokens=True) for p in prompts]
        calls = [tool_call_for(t, p.data_source) for t, p in zip(texts, prompts)]
        calls = [c if c is not None and c[0] in self.toolbox.available else None for c in calls]
        futures = {i: self.toolbox.submit(*c) for i, c in enumerate(calls) if c is not None}
        out: list[list[tuple[str, int]]] = []
        failed = 0
        for i, p in enumerate(prompts):
            if i not in futures:
                out.append([(p.answer, ROLE_MODEL)])
                continue
            result = futures[i].result()
            failed += not result.ok
            out.append(demonstration(calls[i][0], calls[i][1], result.text, p.answer)[1])
        self.toolbox.take_counts()
        if failed:
            self.note(
                f"warm-up: {failed} demonstration tool call(s) failed; their results are shown as they came"
            )
        return out

    def close(self) -> None:
        self.toolbox.close()


def roles_summary(roles: Sequence[np.ndarray]) -> dict[str, float]:
    n = sum(len(r) for r in roles)
    tool = sum(int((r == ROLE_TOOL_RESULT).sum()) for r in roles)
    call = sum(int((r == ROLE_TOOL_CALL).sum()) for r in roles)
    return {"agent/tool_result_token_frac": tool / max(1, n), "agent/tool_call_token_frac": call / max(1, n)}


__all__ = ["AgentRunner", "TOOL_TAGS", "check_config", "prepare_task_data", "roles_summary", "tool_call_for"]
