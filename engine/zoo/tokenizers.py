"""Small CLIP and T5 tokenizers trained locally, in the formats of the real ones.

The tiny zoo needs tokenizers that behave like the real ones (CLIP: lowercased byte-level BPE with `</w>`
word ends, bos/eos as the two highest ids, padded to 77; T5: SentencePiece-style Unigram with pad=0,
eos=1, unk=2) but small enough to train in milliseconds from a fixed corpus. Training is deterministic, so
the saved files are byte-identical from run to run.
"""

from __future__ import annotations

import math
from typing import Any

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
T5_SPECIALS = ("<pad>", "</s>", "<unk>")

# A fixed corpus of prompt-like text: enough words for a few hundred merges/pieces. Changing it changes the
# tokenizers (and so the zoo's hashes), so keep it stable.
_WORDS = """
a photo of a cat sitting on a red sofa in a sunny living room, highly detailed, soft light
a dog running on the beach at sunset with waves and clouds, cinematic, golden hour
portrait of an old man with a beard and a hat, oil painting, dramatic lighting
a futuristic city at night with neon signs, flying cars and rain, cyberpunk style
a bowl of fruit on a wooden table: apples, oranges, bananas and grapes, still life
mountains covered in snow under a blue sky, a lake in the foreground, landscape photography
a small house in a green forest with a river, fantasy illustration, watercolor
an astronaut riding a horse on the moon, digital art, trending, sharp focus, 4k
a close up of a flower with water drops, macro photography, bokeh background
the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs
a woman reading a book in a library, warm colors, depth of field, 35mm film
a robot painting a picture of a tree, studio lighting, three dimensional render
children playing football in a park, summer afternoon, wide angle, vivid colors
a sailing ship on a stormy sea, lightning, dark clouds, epic, matte painting
a cup of coffee and a croissant on a white plate, breakfast, top view, minimal
text that says hello world written on a blackboard with white chalk
an owl on a branch in the moonlight, stars, night sky, fine art print
a mask of the kitchen, the chair, the window and the door, segmentation, label
one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9
"""


def tokenizer_corpus() -> list[str]:
    return [line.strip() for line in _WORDS.strip().splitlines() if line.strip()]


def _clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A tokenizers.Tokenizer with CLIP's normalizer and pre-tokenizer (as transformers' CLIPTokenizer)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token=CLIP_EOS) if vocab else
                    BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=CLIP_EOS))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                                   r"""[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tok


def _clip_words() -> dict[str, int]:
    """Corpus words as CLIP sees them (normalised, split, byte-level mapped), with their counts."""
    tok = _clip_backend({}, [])
    counts: dict[str, int] = {}
    for line in tokenizer_corpus():
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            counts[word] = counts.get(word, 0) + 1
    return counts


def train_clip_vocab(num_merges: int = 320) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocab and merges in CLIP's layout: byte symbols, byte symbols + `</w>`, merges, then bos, eos.

    A plain BPE trainer of our own: the tokenizers library's trainer breaks ties between equally frequent
    pairs in hash order, which would make the zoo's bytes differ between runs. Here ties go to the
    lexicographically smallest pair. bos/eos are the two highest ids, as in the real vocab (49406, 49407):
    CLIPTextModel configs with the legacy `eos_token_id=2` pool at argmax(input_ids), the first eos.
    """
    from tokenizers import pre_tokenizers

    words = [(list(word[:-1]) + [word[-1] + "</w>"], count) for word, count in _clip_words().items()]
    merges = learn_bpe_merges(words, num_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [a + "</w>" for a in alphabet] + [left + right for left, right in merges]:
        vocab.setdefault(symbol, len(vocab))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return vocab, merges


def learn_bpe_merges(words: list[tuple[list[str], int]], num_merges: int) -> list[tuple[str, str]]:
    """Up to `num_merges` BPE merges over (symbols, count) words, deterministically: the most frequent pair
    first, ties to the lexicographically smallest pair; stops when no pair occurs twice."""
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        words = [(_merge(symbols, best), count) for symbols, count in words]
    return merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def make_clip_tokenizer() -> Any:
    """A transformers CLIPTokenizer over a locally trained vocab (model_max_length 77, pad = eos)."""
    from transformers import CLIPTokenizer

    vocab, merges = train_clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77,
                         unk_token=CLIP_EOS, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS)


def train_t5_vocab() -> list[tuple[str, float]]:
    """Unigram pieces with log-probability scores, SentencePiece style (`▁` starts a word); pad=0, eos=1, unk=2.

    Built directly from corpus counts rather than with the tokenizers UnigramTrainer, whose pruning and float
    sums vary between runs: pieces are `▁word` for every corpus word, frequent in-word substrings (2-4
    characters) and every printable ASCII character, scored by log relative frequency (ties by piece).
    """
    counts: dict[str, int] = {}

    def add(piece: str, n: int = 1) -> None:
        counts[piece] = counts.get(piece, 0) + n

    for line in tokenizer_corpus():
        for word in line.split():
            add("▁" + word)
            for size in (2, 3, 4):
                for start in range(len(word) - size + 1):
                    add(word[start:start + size])
    counts = {p: n for p, n in counts.items() if p.startswith("▁") or n >= 3}
    for code in range(33, 127):
        add(chr(code))
    add("▁")
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    pieces = [(piece, round(math.log(n / total), 6)) for piece, n in ranked]
    return [(s, 0.0) for s in T5_SPECIALS] + pieces


def make_t5_tokenizer() -> Any:
    """A transformers T5Tokenizer over the locally built Unigram vocab (no sentinel extra ids)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=train_t5_vocab(), extra_ids=0, model_max_length=512)
