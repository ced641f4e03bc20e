"""A tiny random Llama, built locally (never downloaded): config, random safetensors weights, and a byte-level
BPE tokenizer trained on the spot with the `tokenizers` library, with a chat template. Small enough to serve on
CPUs with tensor parallel 2 (two KV heads, a head size vLLM's CPU attention supports).

    python -m tests.e2e.tinymodel OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_TEXT = (
    "the model weights land on the node before the engine starts and the ray head waits for every worker "
    "tensor parallel pipeline parallel cluster readiness probe sidecar manifest download verified complete "
    "hello world what is your name a tiny llama answers with random tokens because its weights are random "
    "kubernetes restarts the group when a node is lost and the runtime exits with a clear error"
)


def _corpus(lines: int = 400) -> list[str]:
    import random

    rng = random.Random(7)
    words = _TEXT.split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(lines)]


def build_tokenizer(out_dir: str, vocab_size: int = 512) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    fast.save_pretrained(out_dir)
    # Older and newer transformers keep the template in different files; make sure the config carries it.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=1)
    return int(tok.get_vocab_size())


def build_tiny_llama(out_dir: str, seed: int = 0) -> dict[str, bytes]:
    """Write the model into out_dir and return its files as {relative path: bytes}."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    vocab = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 64
        num_key_value_heads=2,  # one per tensor-parallel rank
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, max_new_tokens=16).save_pretrained(out_dir)
    files: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, out_dir)] = fh.read()
    return files


if __name__ == "__main__":
    built = build_tiny_llama(sys.argv[1])
    print("\n".join(f"{len(v):>10} {k}" for k, v in sorted(built.items())))
