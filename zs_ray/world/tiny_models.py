"""Tiny tokenizers and models built in-project (no model hub here), saved in Hugging Face format.

The tokenizer is a byte-level BPE trained with `tokenizers` on the world's text; the protocol tags
are added whole (as normal, not special, tokens, so engines never strip them when detokenizing),
and a ChatML chat template is attached. Models are Llama or Qwen2 configs saved as safetensors that
load in transformers and in vLLM.
"""
from __future__ import annotations

import os
from typing import Iterable

from zs_ray.core.protocol import INVALID_FEEDBACK, NO_MORE_SEARCH_FEEDBACK, PROMPT_TEMPLATE, TAGS

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SIZES = {
    # 0.33M parameters: the CPU default policy. Two layers rather than four: an induction head (the
    # copy skill's first half) forms in ~700 steps with two layers and had not formed after 1,000 with four
    # (3.3 nats), at a third of the time per step; a small FFN learned it as fast (docs/experiments.md).
    "policy": dict(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4),
    # The earlier 4-layer policy (1.2M): memorises more, copies later; tests/test_learning.py was verified on it.
    "policy_4l": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4),
    "simulator": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4),
    "test": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def protocol_texts() -> list[str]:
    """Texts every zs-ray tokenizer must encode compactly: the prompts and environment strings."""
    from zs_ray.core import simulator_prompts as sp

    return [PROMPT_TEMPLATE, INVALID_FEEDBACK, NO_MORE_SEARCH_FEEDBACK, sp.PROMPT_USEFUL, sp.PROMPT_NOISY,
            sp.SFT_PROMPT, sp.DEMO_DOCS, "Doc 1: Doc 2: Doc 3: Doc 4: Doc 5: Useful Output: Noisy Output:"]


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 2000):
    """Train a byte-level BPE tokenizer and save it as a Hugging Face fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + protocol_texts() * 5, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_model(tokenizer_dir: str, out_dir: str, size: str = "policy", arch: str = "llama",
                    seed: int = 0, max_position_embeddings: int = 4096):
    """A randomly initialised tiny causal LM saved as safetensors next to its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = SIZES[size]
    common = dict(vocab_size=len(tok), max_position_embeddings=max_position_embeddings,
                  bos_token_id=tok.convert_tokens_to_ids(BOS), eos_token_id=tok.convert_tokens_to_ids(EOS),
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=True, torch_dtype="float32", **dims)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(head_dim=dims["hidden_size"] // dims["num_attention_heads"], **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown tiny model arch {arch!r}: expected 'llama' or 'qwen2'")
    model.generation_config.eos_token_id = common["eos_token_id"]
    model.generation_config.pad_token_id = common["pad_token_id"]
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def build_test_assets(out_dir: str, texts: Iterable[str] | None = None, size: str = "test",
                      arch: str = "llama") -> dict[str, str]:
    """A tokenizer + tiny random policy for tests (idempotent: reuses what is already on disk)."""
    tok_dir, model_dir = os.path.join(out_dir, "tokenizer"), os.path.join(out_dir, f"{arch}-{size}")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        base = list(texts or []) or [
            "the capital of zorland is karova . the founder of karova is milo tesh .",
            "Doc 1: zorland is a country . its capital is karova . Doc 2: milo tesh founded it in 1821 .",
        ]
        train_tokenizer(base * 20, tok_dir, vocab_size=600)
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        make_tiny_model(tok_dir, model_dir, size=size, arch=arch)
    return {"tokenizer": tok_dir, "model": model_dir}
