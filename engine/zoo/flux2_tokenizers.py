"""Small Qwen3-style and Mistral-style tokenizers for the tiny FLUX.2 zoo, built deterministically.

Both real ones are byte-level BPE tokenizers driven by a chat template; the FLUX.2 pipelines only use the
text path (the template turns a prompt into a conversation, the tokenizer pads it to 512 tokens). These
keep that shape: a byte alphabet, merges learnt from the fixed corpus of `tiny_tokenizers` by our own
trainer (ties broken lexicographically, so the files are byte-identical run to run), the special tokens
their templates use, and templates that render conversations the way the real ones do:
- Qwen3: `<|im_start|>role\\ncontent<|im_end|>\\n`, the assistant prompt with an empty `<think>` block when
  `enable_thinking` is false; pad `<|endoftext|>`, right padding.
- Mistral Small 3.x: `<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]`, message content given as a list
  of `{"type": "text", "text": ...}` parts (as Flux2Pipeline sends it) or a string; pad `<pad>`.
"""

from __future__ import annotations

import functools
from typing import Any

from engine.zoo.tokenizers import learn_bpe_merges, tokenizer_corpus

MAX_MERGES = 360
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[IMG]")

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}")

MISTRAL_CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}[SYSTEM_PROMPT]{{ text(message['content']) }}[/SYSTEM_PROMPT]"
    "{%- elif message['role'] == 'user' -%}[INST]{{ text(message['content']) }}[/INST]"
    "{%- else -%}{{ text(message['content']) }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}")


def train_byte_bpe(num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab (byte symbols, then merges) learnt from the fixed corpus, deterministically."""
    from tokenizers import pre_tokenizers

    if num_merges > MAX_MERGES:
        raise ValueError(f"at most {MAX_MERGES} merges are learnt, asked for {num_merges}")
    merges = _learn_merges(MAX_MERGES)[:num_merges]  # greedy: the first k merges of a longer run are a k-run
    vocab: dict[str, int] = {}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in merges]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


@functools.lru_cache(maxsize=1)
def _learn_merges(num_merges: int) -> list[tuple[str, str]]:
    from tokenizers import pre_tokenizers

    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts: dict[str, int] = {}
    for line in tokenizer_corpus():
        for word, _ in splitter.pre_tokenize_str(line):
            counts[word] = counts.get(word, 0) + 1
    return learn_bpe_merges([(list(word), count) for word, count in sorted(counts.items())], num_merges)


def _byte_level_tokenizer(specials: tuple[str, ...], num_merges: int, specials_first: bool) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = train_byte_bpe(num_merges)
    if specials_first:  # Mistral: control tokens take the lowest ids
        vocab = {**{s: i for i, s in enumerate(specials)}, **{k: v + len(specials) for k, v in vocab.items()}}
    else:  # Qwen: after the BPE vocabulary
        vocab = {**vocab, **{s: len(vocab) + i for i, s in enumerate(specials)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return backend


def make_qwen3_tokenizer() -> Any:
    """A Qwen3-style tokenizer (PreTrainedTokenizerFast) with its chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(QWEN_SPECIALS, 360, specials_first=False),
        pad_token="<|endoftext|>", eos_token="<|im_end|>", padding_side="right", model_max_length=40960)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def make_mistral_tokenizer() -> Any:
    """A Mistral-Small-style tokenizer (PreTrainedTokenizerFast) with a chat template for the text path."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(MISTRAL_SPECIALS, 300, specials_first=True),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", padding_side="right",
        model_max_length=131072)
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer
