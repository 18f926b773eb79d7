"""Write a tiny Llama with random weights and a word-level tokenizer, for vLLM on a CPU.

Runs with the vLLM virtualenv's Python (it needs torch, transformers and tokenizers), never with
hpcrag's: `.venv-vllm/bin/python scripts/make_tiny_model.py OUT_DIR`. Nothing is downloaded: the
tokenizer is trained here on a built-in word list. head_dim is 64 because vLLM's CPU attention
refuses smaller heads. The folder is written next to OUT_DIR and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
WORD_TEXT = (
    "the a an of to and in is it that for on with as was at by be this are from or have not but what "
    "all were when we there can which their one said do if will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first "
    "been its who now people my made over did down only way find use may water long little very after "
    "words called just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three word must because does part even "
    "place well such here take why things help put years different away again off went old number "
    "slurm gpu node job queue partition cluster vector search index shard rank model tier serve "
    "question answer hello world please explain summarise compare analyse step reasoning"
)
WORDS = WORD_TEXT.split()
# Long enough for a RAG prompt of tier S (rag.yaml: 2,048 tokens) with room to spare.
MAX_POSITIONS = 3072


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in dict.fromkeys(WORDS + [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,?!:;-'\""]):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=specials[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_model(out: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def _current(out: Path) -> bool:
    """A model from this version of the script is there (an older one, with a shorter context, is not)."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (out / "tokenizer.json").is_file() and config.get("max_position_embeddings") == MAX_POSITIONS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (left alone if it holds a model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out
    if _current(out):
        print(f"tiny model: {out} already exists")
        return 0
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build_tokenizer(staging)
    vocab_size = len(json.loads((staging / "tokenizer.json").read_text())["model"]["vocab"])
    build_model(staging, vocab_size, args.seed)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"tiny model: wrote {out} (vocab {vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
