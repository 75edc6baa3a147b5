"""Small CLIP and T5 tokenizers trained locally, in the formats of the real ones.

The tiny zoo needs tokenizers that behave like the real ones (CLIP: lowercased byte-level BPE with `</w>`
word ends, bos/eos as the two highest ids, padded to 77; T5: SentencePiece-style Unigram with pad=0,
eos=1, unk=2) but small enough to train in milliseconds from a fixed corpus. Training is deterministic, so
the saved files are byte-identical from run to run.
"""

from __future__ import annotations

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


def train_clip_vocab(vocab_size: int = 512) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocab and merges in CLIP's layout: byte symbols, byte symbols + `</w>`, merges, then bos, eos.

    bos/eos are the two highest ids, as in the real vocab (49406, 49407): CLIPTextModel configs with the
    legacy `eos_token_id=2` pool at argmax(input_ids), which is then the first eos.
    """
    import json

    from tokenizers import pre_tokenizers, trainers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = _clip_backend({}, [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, min_frequency=1, show_progress=False,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>", special_tokens=[])
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Rebuild the vocab in CLIP's order so every byte and byte+</w> symbol exists (real CLIP has all 512).
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return vocab, merges


def make_clip_tokenizer(vocab_size: int = 600) -> Any:
    """A transformers CLIPTokenizer over a locally trained vocab (model_max_length 77, pad = eos)."""
    from transformers import CLIPTokenizer

    vocab, merges = train_clip_vocab(vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77,
                         unk_token=CLIP_EOS, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS)


def train_t5_vocab(vocab_size: int = 400) -> list[tuple[str, float]]:
    """Unigram pieces with scores, SentencePiece style (`▁` word starts); pad=0, eos=1, unk=2."""
    import json

    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(T5_SPECIALS),
                                      unk_token="<unk>", show_progress=False, shrinking_factor=0.75,
                                      initial_alphabet=[chr(c) for c in range(33, 127)])
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    pieces = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    specials = [(s, 0.0) for s in T5_SPECIALS]
    return specials + [p for p in pieces if p[0] not in T5_SPECIALS]


def make_t5_tokenizer(vocab_size: int = 400) -> Any:
    """A transformers T5Tokenizer over a locally trained Unigram vocab (no sentinel extra ids)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=train_t5_vocab(vocab_size), extra_ids=0, model_max_length=512)
