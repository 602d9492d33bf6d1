"""archer's typed configuration: one dataclass tree, the single source of truth for every key.

Presets (YAML under `presets/`) and `key=value` overrides are merged onto `ArcherConfig` by
`archer.core.config.compose`; OmegaConf's struct mode rejects unknown keys and wrong types, and
the metadata attached by `opt()` (doc line, choices, bounds) is checked afterwards. Sizes follow
verl's conventions: batch sizes in prompts, micro-batches in sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archer.core.config.fields import opt, section
from archer.core.rewards import REWARD_FUNCTIONS

ENGINES = ("local", "verl")
ADV_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus_baseline")
POLICY_LOSSES = ("vanilla", "archer", "aspo", "aepo")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_TYPES = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class TinyModelConfig:
    """A small Qwen2 built in code when `model.path` is null (no download)."""

    hidden_size: int = opt(128, "hidden size of the tiny Qwen2", ge=8)
    num_layers: int = opt(4, "decoder layers", ge=1)
    num_heads: int = opt(4, "attention heads", ge=1)
    num_kv_heads: int = opt(2, "key/value heads (grouped-query attention)", ge=1)
    intermediate_size: int = opt(512, "MLP width", ge=8)
    max_position_embeddings: int = opt(256, "longest prompt+response the tiny model accepts", ge=16)
    tie_word_embeddings: bool = opt(True, "share input and output embeddings")


@dataclass
class ModelConfig:
    path: str | None = opt(
        None, "local Hugging Face model folder; null builds the tiny model in code (never downloads)"
    )
    tokenizer_path: str | None = opt(None, "tokenizer folder; null means model.path (or the char tokenizer)")
    tiny: TinyModelConfig = section(TinyModelConfig, "the in-code tiny model used when path is null")
    dtype: str = opt("fp32", "parameter dtype for training", choices=DTYPES)
    attn_implementation: str = opt("sdpa", "attention kernel", choices=("sdpa", "eager", "flash_attention_2"))
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass")
    trust_remote_code: bool = opt(False, "allow model code shipped inside the model folder")


@dataclass
class SynthConfig:
    """The seeded synthetic task used when `data.train_files` is empty."""

    task: str = opt(
        "arithmetic",
        "synthetic task: arithmetic (`23+45=` → `68`), chain (`7+5-3=` → `12-3=9`, worked step by "
        "step); the tool tasks (agent.enable) need the python tool (tool_arithmetic: "
        "products too large to do in the head), the search tool (corpus_qa: facts in a generated corpus) or "
        "both",
        choices=("arithmetic", "chain", "tool_arithmetic", "corpus_qa", "tool_mix"),
    )
    n: int = opt(10000, "number of training problems to generate", ge=1)
    val_n: int = opt(256, "number of held-out validation problems", ge=0)
    difficulty: str = opt("easy", "difficulty preset", choices=("easy", "medium", "hard"))
    max_operand: int = opt(0, "largest operand; 0 takes the difficulty's value", ge=0)
    ops: str = opt("", "operators to use, e.g. '+-' or '+-*'; empty takes the difficulty's value")
    terms: int = opt(4, "chain task: terms per chain (the longest chains)", ge=2)
    min_terms: int = opt(0, "chain task: the shortest chains (0 = all chains have `terms` terms)", ge=0)


@dataclass
class DataConfig:
    train_files: list[str] = opt([], "parquet/jsonl training files; empty uses data.synth")
    val_files: list[str] = opt([], "parquet/jsonl validation files; empty uses the synth held-out split")
    synth: SynthConfig = section(SynthConfig, "synthetic task settings")
    prompt_key: str = opt("prompt", "column holding the prompt (a string or a chat message list)")
    answer_key: str = opt(
        "reward_model.ground_truth", "column (dotted for nested structs) holding the ground-truth answer"
    )
    apply_chat_template: bool = opt(True, "render chat-message prompts with the tokenizer's chat template")
    max_prompt_length: int = opt(64, "prompts longer than this many tokens are dropped", ge=1)
    train_batch_size: int = opt(16, "prompts per training step", ge=1)
    shuffle: bool = opt(True, "shuffle the training prompts every epoch")


@dataclass
class ValRolloutConfig:
    n: int = opt(1, "samples per validation prompt", ge=1)
    temperature: float = opt(0.0, "validation temperature; 0 means greedy", ge=0.0)
    top_p: float = opt(1.0, "validation nucleus sampling", gt=0.0, le=1.0)
    max_prompts: int = opt(256, "validate on at most this many prompts (0 = all)", ge=0)


@dataclass
class RolloutConfig:
    n: int = opt(4, "responses sampled per prompt (the group size)", ge=1)
    temperature: float = opt(1.0, "sampling temperature", gt=0.0)
    top_p: float = opt(1.0, "nucleus sampling", gt=0.0, le=1.0)
    top_k: int = opt(0, "top-k sampling; 0 or -1 disables", ge=-1)
    max_new_tokens: int = opt(16, "longest response in tokens", ge=1)
    generation_batch_size: int = opt(0, "sequences per generate() call; 0 = all at once", ge=0)
    compile_decode: bool = opt(
        False,
        "decode with a static KV cache and a compiled forward (CUDA graphs on a GPU; the first "
        "steps pay the compilation; prompts are padded to data.max_prompt_length)",
    )
    val: ValRolloutConfig = section(ValRolloutConfig, "validation sampling")
    backend: str = opt(
        "vllm",
        "engine: verl only: the rollout server (vllm, sglang, or hf: archer's own HF generation "
        "inside the training workers, no vLLM needed, for one GPU or a CPU)",
        choices=("vllm", "sglang", "hf"),
    )


@dataclass
class FilterGroupsConfig:
    """DAPO dynamic sampling: drop groups whose rewards are all equal, sample more until full."""

    enable: bool = opt(False, "drop constant-reward groups and keep sampling until the batch is full")
    metric: str = opt("acc", "what must vary within a group", choices=("acc", "reward"))
    max_num_gen_batches: int = opt(10, "cap on generation rounds per step (0 = no cap)", ge=0)


@dataclass
class OverlongBufferConfig:
    """DAPO soft overlong punishment: a linear penalty in the last `len` tokens before the limit."""

    enable: bool = opt(False, "penalise responses that enter the last `len` tokens before the limit")
    len: int = opt(4, "buffer length in tokens", ge=1)
    penalty_factor: float = opt(1.0, "penalty at the length limit", ge=0.0)


@dataclass
class AlgorithmConfig:
    adv_estimator: str = opt("grpo", "advantage estimator", choices=ADV_ESTIMATORS)
    norm_adv_by_std_in_grpo: bool = opt(True, "divide GRPO advantages by the group's std")
    filter_groups: FilterGroupsConfig = section(FilterGroupsConfig, "DAPO dynamic sampling")
    overlong_buffer: OverlongBufferConfig = section(OverlongBufferConfig, "DAPO overlong reward shaping")


@dataclass
class ArcherLossConfig:
    """Archer's dual-token constraints: tokens above the per-response entropy quantile are "forks"."""

    token_entropy_quantile: float = opt(
        0.8, "per-response entropy quantile splitting the two token sets", gt=0.0, lt=1.0
    )
    low_entropy_clip_ratio_low: float = opt(0.2, "clip below 1 for low-entropy tokens", ge=0.0)
    low_entropy_clip_ratio_high: float = opt(0.2, "clip above 1 for low-entropy tokens", ge=0.0)
    high_entropy_clip_ratio_low: float = opt(0.4, "clip below 1 for high-entropy tokens", ge=0.0)
    high_entropy_clip_ratio_high: float = opt(0.4, "clip above 1 for high-entropy tokens", ge=0.0)
    high_entropy_kl_scale: float = opt(
        0.0, "KL-loss scale on high-entropy tokens (low-entropy use 1)", ge=0.0
    )


@dataclass
class OptimConfig:
    lr: float = opt(1e-6, "AdamW learning rate", gt=0.0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimizer steps", ge=0)
    schedule: str = opt("constant", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    weight_decay: float = opt(0.01, "AdamW weight decay", ge=0.0)
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    grad_clip: float = opt(1.0, "max global grad norm (0 disables clipping)", ge=0.0)


@dataclass
class ActorConfig:
    policy_loss: str = opt(
        "vanilla", "policy loss by name (see archer.core.algorithms)", choices=POLICY_LOSSES
    )
    clip_ratio_low: float = opt(0.2, "PPO clip below 1 (epsilon_low)", ge=0.0)
    clip_ratio_high: float = opt(0.2, "PPO clip above 1 (epsilon_high, DAPO clip-higher)", ge=0.0)
    clip_ratio_c: float = opt(3.0, "dual-clip bound for negative advantages (> 1)", gt=1.0)
    aspo_dual_clip: float = opt(3.0, "ASPO soft dual clip on the flipped ratio", gt=1.0)
    archer: ArcherLossConfig = section(ArcherLossConfig, "Archer dual-token loss settings")
    loss_agg_mode: str = opt("token-mean", "how token losses become one number", choices=LOSS_AGG_MODES)
    ppo_epochs: int = opt(1, "passes over each rollout batch", ge=1)
    ppo_mini_batch_size: int = opt(16, "prompts per optimizer step (x rollout.n sequences)", ge=1)
    ppo_micro_batch_size: int = opt(64, "sequences per forward/backward (gradient accumulation)", ge=1)
    use_kl_loss: bool = opt(False, "add a KL(policy || reference) term to the loss")
    kl_loss_coef: float = opt(0.001, "KL-loss coefficient", ge=0.0)
    kl_loss_type: str = opt("low_var_kl", "KL estimator", choices=KL_TYPES)
    entropy_coeff: float = opt(0.0, "entropy bonus coefficient", ge=0.0)
    aepo_entropy_advantage: float = opt(
        0.0,
        "AEPO entropy-aware advantage A·(1 + α·z(H)) inside policy_loss=aepo (α; 0 = off, AEPO uses 0.2)",
        ge=0.0,
    )
    optim: OptimConfig = section(OptimConfig, "optimizer")


@dataclass
class RewardConfig:
    function: str = opt(
        "arithmetic",
        "reward function: arithmetic, chain (worked chains: the final result), math (1/0), code "
        "(unit tests, 1/0), f1 (ARPO's format-gated token F1: -1 on a bad format)",
        choices=REWARD_FUNCTIONS,
    )
    by_source: dict[str, str] = opt(
        {},
        "reward function per data_source, overriding reward.function: exact names or glob patterns "
        "(first match), e.g. {aime*: math, hotpotqa: f1}; the same rule on both engines",
    )
    timeout_s: float = opt(
        5.0, "grading timeout in seconds: per response (math), per unit test (code)", gt=0.0
    )
    format_reward: float = opt(0.0, "reward added for a parseable answer (0 = off)", ge=0.0)


@dataclass
class WarmupConfig:
    """A short supervised warm-up so that RL starts from a model that is right sometimes."""

    enable: bool = opt(False, "fine-tune on the task's answers before RL")
    steps: int = opt(300, "supervised optimizer steps", ge=0)
    batch_size: int = opt(64, "sequences per supervised step", ge=1)
    lr: float = opt(3e-3, "supervised learning rate", gt=0.0)
    label_noise: float = opt(
        0.0,
        "fraction of warm-up answers replaced by a weak teacher's slip (integer answers: +1; worked "
        "chains: see warmup.slip)",
        ge=0.0,
        le=1.0,
    )
    slip: str = opt(
        "carry",
        "the teacher's slip on worked chains: carry (the first carry or borrow forgotten) or "
        "first_step (the first intermediate result one too high); it works on correctly from there",
        choices=("carry", "first_step"),
    )
    target_accuracy: float = opt(
        0.0,
        "stop early once greedy decoding writes what the teacher writes (its answer, or its slip "
        "under label_noise) on this share of the first 64 training prompts (teacher-forced, every "
        "25 steps); `steps` is then the cap (0 = run all steps)",
        ge=0.0,
        le=1.0,
    )
    cache: bool = opt(True, "reuse a finished warm-up of the same settings from the cache directory")


@dataclass
class TraceConfig:
    enable: bool = opt(True, "write the per-token trace (entropy, influence) for every rollout step")
    dir: str | None = opt(None, "trace directory; null means <run>/trace")
    write_every: int = opt(1, "write every k-th step", ge=1)
    fsync: bool = opt(False, "fsync each step file and the manifest (durable across power loss)")
    row_group_size: int = opt(64, "responses per parquet row group", ge=1)
    compression_level: int = opt(3, "zstd level", ge=1, le=22)
    max_queue: int = opt(4, "steps the background writer may hold before training waits", ge=1)
    influence_storage: str = opt(
        "auto",
        "how per-token influence is stored: auto (rank codes, about 3 bits a token, for steps whose "
        "responses average >= 64 tokens; float16 below) or float16 (float16 everywhere)",
        choices=("auto", "float16"),
    )


@dataclass
class InfluenceConfig:
    """Per-token influence from the real PPO backward (archer/influence; docs/influence.md)."""

    enable: bool = opt(False, "compute per-token influence for the selected prompt groups of every step")
    hessian_mode: str = opt(
        "inverse",
        "precondition with the inverse projected Hessian, or not (identity)",
        choices=("inverse", "identity"),
    )
    hessian_source: str = opt(
        "response",
        "Hessian from response gradients (G_rᵀG_r) or token gradients",
        choices=("response", "token"),
    )
    output_function: str = opt(
        "training_loss",
        "whose gradient is traced: training_loss (the real PPO loss, first epoch), log_prob_advantage (Σ "
        "A·log p), "
        "log_prob (Σ log p) or log_prob_reward (Σ r·log p); the last three use one extra forward+backward",
        choices=("training_loss", "log_prob_advantage", "log_prob", "log_prob_reward"),
    )
    accepted_rejected_scope: str = opt(
        "per_prompt",
        "contrast within each prompt group, or across all selected groups",
        choices=("per_prompt", "all_selected"),
    )
    contrastive_agg: str = opt(
        "sum", "accepted minus rejected: sums (sum) or difference of means (mean)", choices=("sum", "mean")
    )
    contrast: str = opt(
        "include",
        "include: a response's own gradient is part of the contrast its tokens are scored against; "
        "leave_one_out: the contrast (and in inverse mode the Hessian) of response r leaves r out",
        choices=("include", "leave_one_out"),
    )
    response_grad: str = opt(
        "sum", "response gradient = sum or mean of its token gradients", choices=("sum", "mean")
    )
    module_name_filter: str = opt(
        r"mlp\.down_proj$", "regex over nn.Linear names (FSDP wrapper prefixes stripped)"
    )
    max_modules: int = opt(4, "keep the last N matching modules (0 = all)", ge=0)
    projection_dim_factor: int = opt(
        32,
        "projected side k = dim // factor (1 = a random square projection, still not exact; for exact "
        "gradients use projection=identity)",
        ge=1,
    )
    max_proj_vector_sum: int = opt(128, "cap on k_in + k_out per module (0 = none)", ge=0)
    max_hessian_dim: int = opt(
        4096,
        "refuse a projected D = k_in·k_out above this in inverse mode (a dense Hessian takes 8·D² bytes; "
        "0 = none); projection=identity is checked against free memory instead",
        ge=0,
    )
    projection: str = opt(
        "rademacher",
        "random projection entries (rademacher, gaussian), or identity: no projection, exact full-dimension "
        "gradients (projection_dim_factor and max_proj_vector_sum are ignored; refused when the step's "
        "scoring would not fit in memory)",
        choices=("rademacher", "gaussian", "identity"),
    )
    reg_lambda: float = opt(0.0, "Hessian damping; <= 0 means automatic (influence.damping)")
    damping: str = opt(
        "rank",
        "automatic damping when reg_lambda <= 0: 0.1·trace(H)/D (dimension) or 0.1·trace(H)/min(R, D), "
        "R the responses (tokens) of the unit (rank: the same relative damping for projected and exact)",
        choices=("dimension", "rank"),
    )
    max_tokens_per_response: int = opt(
        0, "capture at most this many evenly spaced tokens per response (0 = all)", ge=0
    )
    max_prompts_per_step: int = opt(0, "trace at most this many prompt groups per step (0 = no cap)", ge=0)
    storage_dtype: str = opt("bf16", "dtype of the stored factors until scoring", choices=("bf16", "fp32"))
    grad_offload_to_cpu: bool = opt(
        False, "move captured factors to CPU memory as they are captured (and score there)"
    )
    force_gpu_compute: bool = opt(False, "score on the GPU even when factors were offloaded")
    profile_timing: bool = opt(
        False, "report timing_s/influence_{capture,solve,score} (synchronises the GPU)"
    )
    accept_rule: str = opt(
        "group_max",
        "over correctness (the reward's acc; the reward where it reports none): equals the group "
        "maximum, or > accept_threshold",
        choices=("group_max", "threshold"),
    )
    accept_threshold: float = opt(0.5, "reward threshold for accept_rule=threshold")
    check_every: int = opt(
        0,
        "local engine: every k-th traced step, keep the weights and optimizer state going into its "
        "update (<run>/checkpoints/influence/), so 'archer influence check' can re-run it (0 = off)",
        ge=0,
    )
    check_keep: int = opt(2, "how many of those pre-update snapshots to keep, newest first (0 = all)", ge=0)


@dataclass
class LoggingConfig:
    tensorboard: bool = opt(False, "write tensorboard event files to <run>/tensorboard")
    wandb: bool = opt(False, "log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    wandb_project: str = opt("archer", "W&B project name")
    wandb_entity: str | None = opt(None, "W&B entity (team or user); null: your default entity")
    wandb_group: str | None = opt(None, "W&B run group (e.g. one sweep); null: none")
    wandb_tags: list[str] = opt([], "W&B run tags")
    samples_every: int = opt(
        10,
        "log sample generations (prompt, response, reward) every k steps to tensorboard (text) and "
        "W&B (a table); 0 = off. verl logs its validation samples at each validation instead",
        ge=0,
    )
    samples: int = opt(4, "sample generations per log (one response per prompt group first)", ge=1)
    histograms_every: int = opt(
        10, "log histograms of per-token entropy and influence every k steps (0 = off)", ge=0
    )
    log_every: int = opt(1, "print a progress line every k steps when stdout is not a terminal", ge=1)


@dataclass
class TrainerConfig:
    total_steps: int = opt(100, "RL steps to run", ge=1)
    val_every: int = opt(0, "validate every k steps (0 = only before and after training)", ge=0)
    val_before_train: bool = opt(True, "validate before the first step")
    save_every: int = opt(0, "checkpoint every k steps (0 = only at the end)", ge=0)
    keep_checkpoints: int = opt(2, "keep the newest k checkpoints (0 = keep all)", ge=0)
    out_dir: str = opt("runs", "root folder for run directories")
    run_name: str | None = opt(None, "run directory name; null means <preset>-<timestamp>")
    device: str = opt("auto", "where the local engine runs", choices=("auto", "cpu", "cuda"))
    num_threads: int = opt(
        0, "torch CPU threads (0 = all cores); on verl, the driver's (where the warm-up runs)", ge=0
    )
    cache_dir: str | None = opt(None, "cache for warm-ups and tokenizers; null means <out_dir>/.cache")
    logging: LoggingConfig = section(LoggingConfig, "metric sinks")


@dataclass
class PythonToolConfig:
    """The sandboxed Python tool (archer/core/tools/python_sandbox.py)."""

    enable: bool = opt(True, "offer <python>code</python> to the model")
    timeout_s: float = opt(5.0, "wall-clock limit per call; the whole process group is killed", gt=0.0)
    cpu_s: int = opt(2, "CPU-time limit per call (RLIMIT_CPU)", ge=1)
    memory_mb: int = opt(512, "address-space limit per call (RLIMIT_AS)", ge=64)
    max_processes: int = opt(16, "process limit (RLIMIT_NPROC, counted inside the sandbox)", ge=1)
    max_file_mb: int = opt(
        16, "largest file the code may write (RLIMIT_FSIZE); the work dir holds 4x that", ge=1
    )
    max_output_chars: int = opt(200, "output kept per call (the rest is cut, with a note)", ge=1)
    isolation: str = opt(
        "bwrap",
        "bwrap: run code inside bubblewrap (own mounts, pid, network; seccomp), refused where it "
        "cannot; none: no isolation at all (UNSAFE: the code gets your user's rights; warned at "
        "every start; docs/security.md)",
        choices=("bwrap", "none"),
    )
    cache_size: int = opt(
        1024, "results of identical code kept per run (the tool is stateless; 0 = off)", ge=0
    )
    backend: str = opt(
        "local",
        "where the code runs: local (this machine, isolated as `isolation` says) or sandbox_fusion "
        "(a SandboxFusion server at sandbox_fusion_url, with that server's isolation; docs/security.md)",
        choices=("local", "sandbox_fusion"),
    )
    sandbox_fusion_url: str | None = opt(
        None,
        "the SandboxFusion server's run_code endpoint (backend=sandbox_fusion), e.g. "
        "http://HOST:8080/run_code",
    )


@dataclass
class SearchToolConfig:
    """BM25 search over a local corpus (archer/core/tools/search.py); never the network."""

    enable: bool = opt(True, "offer <search>query</search> to the model")
    corpus: str | None = opt(
        None,
        "folder of .txt/.md files or a parquet/jsonl with a text column; null = the "
        "synthetic task's corpus (data.synth.task corpus_qa/tool_mix)",
    )
    top_k: int = opt(1, "documents returned per query", ge=1)
    max_chars: int = opt(120, "characters of result text per query", ge=1)
    cache_path: str | None = opt(
        None,
        "shared JSON query cache (safe across processes); null = "
        "<trainer.cache_dir>/search/cache-<corpus fingerprint>.json",
    )


@dataclass
class ToolsConfig:
    python: PythonToolConfig = section(PythonToolConfig, "the Python tool")
    search: SearchToolConfig = section(SearchToolConfig, "the search tool")
    workers: int = opt(
        2, "tool calls run at once (a thread pool; the decode loop keeps going meanwhile)", ge=1
    )


@dataclass
class AepoRolloutConfig:
    """AEPO's rollout-side changes (policy side: actor.policy_loss=aepo, actor.aepo_entropy_advantage)."""

    dynamic_rollouts: bool = opt(
        False,
        "entropy-balanced global rollouts, as AEPO codes them: per prompt a short root sample (H_root, "
        "its first agent.entropy_tokens tokens) and one monitoring tool rollout (H̄_tool, the mean over "
        "all its segments), both discarded; then m = clip(int(n·σ(0.5·(H_root − H̄_tool))) + 1, 1, n) "
        "initial rollouts",
    )
    consecutive_penalty: float = opt(
        0.05, "branch score × max(0, 1 − penalty·c), c = the prompt's consecutive branching count", ge=0.0
    )
    consecutive_count: str = opt(
        "iteration",
        "how c counts: iteration (AEPO's code: +1 per lock-step iteration in which the prompt gained a "
        "branch or a fresh rollout, else 0; rows wait for each other at their branching decisions) or "
        "decision (+1 per branching decision, 0 after any no; asynchronous, a weaker penalty)",
        choices=("iteration", "decision"),
    )


@dataclass
class AgentConfig:
    """Multi-turn tool rollouts with ARPO/AEPO entropy-based branching (docs/agentic.md): the local
    engine, or verl's agent loop with the hf rollout."""

    enable: bool = opt(
        False,
        "roll out with tools: the model writes <python>/<search> calls and gets "
        "<result>…</result> back (no loss on result tokens); rollout.n is the per-prompt budget",
    )
    algorithm: str = opt(
        "arpo",
        "branching rule: arpo (P = clip(α + β·ΔH)), aepo (with the consecutive-branch "
        "penalty), none (initial rollouts only, refilled to n)",
        choices=("arpo", "aepo", "none"),
    )
    initial_rollouts: int = opt(
        4, "trajectories started per prompt; branches and fresh rollouts fill up to rollout.n", ge=1
    )
    beam_size: int = opt(2, "a branching trajectory makes up to beam_size − 1 copies", ge=1)
    branch_probability: float = opt(
        0.5, "α: the branch probability when the entropy did not change", ge=0.0, le=1.0
    )
    entropy_weight: float = opt(0.2, "β: how much the entropy change ΔH moves the branch probability", ge=0.0)
    entropy_tokens: int = opt(20, "generated tokens per segment whose entropy is measured", ge=1)
    entropy_topk: int = opt(
        10,
        "top-k truncation of each token's entropy, as ARPO's vLLM logprobs (0 = full: local engine only)",
        ge=0,
    )
    refill: str = opt(
        "one",
        "fresh rollouts for a prompt whose trajectories all ended short of the budget: one at a "
        "time (ARPO; each may branch) or all at once",
        choices=("one", "all"),
    )
    max_turns: int = opt(3, "tool calls per trajectory; a call over the limit ends it", ge=0)
    aepo: AepoRolloutConfig = section(AepoRolloutConfig, "AEPO rollout settings (agent.algorithm=aepo)")
    tools: ToolsConfig = section(ToolsConfig, "the tools")


@dataclass
class ArcherConfig:
    description: str = opt("", "one line shown by 'archer presets ls'")
    engine: str = opt("local", "training engine", choices=ENGINES)
    seed: int = opt(0, "global seed (data order, sampling, init)")
    model: ModelConfig = section(ModelConfig, "policy model and tokenizer")
    data: DataConfig = section(DataConfig, "datasets and batch size")
    rollout: RolloutConfig = section(RolloutConfig, "sampling")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "advantages, group filtering, reward shaping")
    actor: ActorConfig = section(ActorConfig, "policy loss and optimisation")
    reward: RewardConfig = section(RewardConfig, "how responses are scored")
    warmup: WarmupConfig = section(WarmupConfig, "supervised warm-up before RL")
    trace: TraceConfig = section(TraceConfig, "per-token trace output")
    influence: InfluenceConfig = section(InfluenceConfig, "per-token influence tracing")
    agent: AgentConfig = section(AgentConfig, "multi-turn tool rollouts, ARPO/AEPO branching")
    trainer: TrainerConfig = section(TrainerConfig, "loop, validation, checkpoints, output")
    verl: dict[str, Any] = opt(
        {}, "raw verl config overrides (engine: verl only), e.g. verl.trainer.nnodes=2"
    )


# --------------------------------------------------------------------------- preset metadata
@dataclass
class SourceDifference:
    """One way a preset differs from its source on purpose."""

    key: str = opt(help="the archer key(s) that differ (comma-separated), or the topic when no key holds it")
    source: str = opt(help="what the source run does, with its file:line")
    why: str = opt(help="one line: why archer keeps its own value")
    revert: list[str] = opt([], "overrides that switch back to the source's behaviour (empty: none exists)")


@dataclass
class PresetSource:
    """A preset's `source:` block: the public run it reproduces and where it deliberately differs.

    Metadata, not a training key: it is read from the preset file, shown by `archer presets ls`
    and `archer presets show` (a preset without one shows its nearest parent's, marked as the
    parent's), never overridable, and not part of the composed config or a run's config.yaml.
    """

    name: str = opt(help="the run reproduced, in words (shown by 'archer presets ls')")
    repository: str = opt(help="owner/name of the public repository")
    commit: str = opt(help="the commit the preset was checked against")
    script: list[str] = opt(help="the run's script and config files (repository paths)")
    paper: str | None = opt(None, "the paper (arXiv id)")
    notes: list[str] = opt([], "what a reader of the source needs to know (e.g. effective settings)")
    differences: list[SourceDifference] = opt([], "settings kept different on purpose")
