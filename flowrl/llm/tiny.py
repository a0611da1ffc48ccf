"""The tiny causal LM of the CPU default: a character-level tokenizer (made with `tokenizers`)
and a small Llama from transformers, saved as an ordinary transformers folder."""

from __future__ import annotations

from pathlib import Path

SPECIAL = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>"}
CHARACTERS = "0123456789+-*/=()<>,.? "


def build_tokenizer():
    """A character-level PreTrainedTokenizerFast: one token per character, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: i for i, token in enumerate([*SPECIAL.values(), *CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=SPECIAL["pad"]))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A", special_tokens=[(SPECIAL["bos"], vocabulary[SPECIAL["bos"]])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"], pad_token=SPECIAL["pad"]
    )


def build_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 64, seed: int = 0):
    """A small Llama with random weights (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save_tiny(directory: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A random tiny LM and its tokenizer written to `directory` (tests, and the pretraining start)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden, layers, heads, seed=seed)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
