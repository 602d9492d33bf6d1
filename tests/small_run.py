"""The smallest quickstart that still trains end to end (a 2-layer, hidden-32 model; a few steps on
a 100-problem task): the overrides the CLI and engine tests share, and the presets they apply to.

The presets are the two-operand arithmetic task of the quickstart before issue 22 (quickstart-arith,
1-3-token answers), not the quickstart's worked chains: these overrides cut answers to 4 tokens,
which a chain's 10-15-token answer does not fit, and the tests stay as fast as they were."""

SMALL_PRESET = "quickstart-arith"
SMALL_INFLUENCE_PRESET = "quickstart-arith-influence"

SMALL_RUN = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "data.synth.max_operand=9",
    "data.synth.n=100",
    "data.synth.val_n=16",
    "data.train_batch_size=4",
    "actor.ppo_mini_batch_size=4",
    "actor.ppo_micro_batch_size=8",
    "rollout.n=4",
    "rollout.max_new_tokens=4",
    "warmup.steps=5",
    "warmup.batch_size=16",
    "rollout.val.max_prompts=16",
    "trainer.num_threads=1",
]
