"""The offline tiny-model kit: a character tokenizer and a small Qwen2 built from a config.

Nothing here downloads anything. The tokenizer is a `tokenizers` WordLevel model over printable
ASCII plus newline, wrapped as a transformers fast tokenizer and saved as an ordinary tokenizer
folder, so every tool that loads a tokenizer from a path (the viewer, eval) works with it.
Its chat template renders only the message contents, so chat-formatted prompts such as
[{"role": "user", "content": "23+45="}] become exactly "23+45=".
"""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n",)
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def char_vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}


def build_char_tokenizer() -> Any:
    """A character-level PreTrainedTokenizerFast (pad 0, eos 1, bos 2, unk 3), left padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(char_vocab(), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex("(?m)."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_qwen2(
    tiny_cfg: Any,
    vocab_size: int,
    *,
    pad_token_id: int,
    eos_token_id: int,
    seed: int,
    attn_implementation: str = "sdpa",
) -> Any:
    """A randomly initialised Qwen2ForCausalLM of the configured size (seeded)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=int(tiny_cfg.hidden_size),
        intermediate_size=int(tiny_cfg.intermediate_size),
        num_hidden_layers=int(tiny_cfg.num_layers),
        num_attention_heads=int(tiny_cfg.num_heads),
        num_key_value_heads=int(tiny_cfg.num_kv_heads),
        max_position_embeddings=int(tiny_cfg.max_position_embeddings),
        tie_word_embeddings=bool(tiny_cfg.tie_word_embeddings),
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = None
    return model


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
