"""The CLIP-L and T5-XXL tokenizers of FLUX.1's text encoders, found offline (engine/models/common/tokenizer_files.py).

Candidates for an encoder whose embedding table has V rows:
1. the pipeline's own `tokenizer/` / `tokenizer_2/` folder, when loading a diffusers folder;
2. `models/tokenizers/clip_l/` or `models/tokenizers/t5xxl/` (and `<kind>-*/` siblings such as the tiny
   zoo's `clip_l-tiny/`), under every directory registered for the `tokenizers` folder key;
3. CLIP only: the original CLIP BPE merges file `bpe_simple_vocab_16e6.txt.gz` shipped inside the
   `open_clip` (PyPI open-clip-torch) or `clip` (clip-anytorch) packages, when one is installed; located
   without importing the package.
A candidate is used only if its vocabulary fits the weights (CLIP: exactly V tokens; T5: between V-128 and
V, as the real T5 pads 32100 tokens to 32128 rows). If nothing fits, `TokenizerMissingError` says what to
put where.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable

from engine.models.common.safetensors_io import ModelFileError
from engine.models.common.tokenizer_files import TokenizerSearch, find_fitting_tokenizer

TOKENIZER_HELP = {
    "clip_l": "the CLIP ViT-L/14 tokenizer: vocab.json + merges.txt (or tokenizer.json), as in the "
              "`tokenizer/` folder of black-forest-labs/FLUX.1-dev or openai/clip-vit-large-patch14, or CLIP's "
              "bpe_simple_vocab_16e6.txt.gz",
    "t5xxl": "the T5 v1.1 tokenizer: spiece.model (or tokenizer.json), as in the `tokenizer_2/` folder of "
             "black-forest-labs/FLUX.1-dev or google/t5-v1_1-xxl",
}
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_PACKAGES = ("open_clip", "clip")
_CLIP_MERGES = 49152 - 256 - 2  # as the original CLIP tokenizer reads its merges file


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", CLIP_BPE_FILE)


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def declared_tokenizer_class(folder: Path) -> str | None:
    """The `tokenizer_class` a folder's tokenizer_config.json declares, or None."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        declared = json.loads(path.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelFileError(path, f"unreadable tokenizer config: {exc}") from None
    return declared if isinstance(declared, str) and declared else None


def load_declared_tokenizer(folder: Path, kind: str, declared: str) -> Any:
    """The tokenizer class a folder declares, resolved as transformers' AutoTokenizer does (local files only, no
    remote code)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for unreadable folders
        raise ModelFileError(folder, f"could not load the {kind} tokenizer this folder declares ({declared}): "
                                     f"{type(exc).__name__}: {exc}") from None
    if tokenizer.pad_token is None:
        raise ModelFileError(folder, f"the {kind} tokenizer this folder declares ({declared}) has no padding token; "
                                     "FLUX pads prompts to a fixed length")
    return tokenizer


def load_tokenizer_dir(folder: Path, kind: str) -> Any:
    """A transformers tokenizer from a folder: the class its tokenizer_config.json declares (AutoTokenizer's
    resolution), else CLIPTokenizer / T5Tokenizer over tokenizer.json, vocab.json+merges.txt, spiece.model, or
    CLIP's gz merges."""
    from transformers import CLIPTokenizer, T5Tokenizer

    declared = declared_tokenizer_class(folder)
    if declared is not None:
        return load_declared_tokenizer(folder, kind, declared)
    if kind == "clip_l" and (folder / CLIP_BPE_FILE).is_file() and not (folder / "vocab.json").is_file() \
            and not (folder / "tokenizer.json").is_file():
        return clip_tokenizer_from_bpe_gz(folder / CLIP_BPE_FILE)
    cls = CLIPTokenizer if kind == "clip_l" else T5Tokenizer
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise ModelFileError(folder, f"could not load the {kind} tokenizer from this folder: {exc}") from exc


def clip_tokenizer_from_bpe_gz(path: Path) -> Any:
    """CLIP's tokenizer from the original merges file: vocab = bytes, bytes+</w>, merges, bos, eos."""
    from transformers import CLIPTokenizer

    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1:_CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines if len(line.split()) == 2]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (a published algorithm)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def packaged_clip_bpe() -> Path | None:
    """CLIP's merges file inside an installed open_clip / clip package (found without importing it)."""
    for package in CLIP_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / CLIP_BPE_FILE
            if candidate.is_file():
                return candidate
    return None


def _clip_refusal(tokenizer: Any, vocab_rows: int) -> str | None:
    return None if len(tokenizer) == vocab_rows else f"{len(tokenizer)} tokens"


def _t5_refusal(tokenizer: Any, vocab_rows: int) -> str | None:
    size = len(tokenizer)  # the real T5 pads its 32100 tokens to 32128 embedding rows
    return None if vocab_rows - 128 < size <= vocab_rows else f"{size} tokens"


def _load_clip(path: Path) -> Any:
    return clip_tokenizer_from_bpe_gz(path) if path.is_file() else load_tokenizer_dir(path, "clip_l")


def _packaged_clip() -> list[Path]:
    packaged = packaged_clip_bpe()
    return [packaged] if packaged is not None else []


SEARCHES = {
    "clip_l": TokenizerSearch(name="clip_l", folder="clip_l", help=TOKENIZER_HELP["clip_l"],
                              readable=has_tokenizer_files, load=_load_clip, refusal=_clip_refusal,
                              refused="not matching the vocabulary size", elsewhere=_packaged_clip),
    "t5xxl": TokenizerSearch(name="t5xxl", folder="t5xxl", help=TOKENIZER_HELP["t5xxl"],
                             readable=has_tokenizer_files, load=lambda path: load_tokenizer_dir(path, "t5xxl"),
                             refusal=_t5_refusal, refused="not matching the vocabulary size"),
}


def find_tokenizer(kind: str, vocab_rows: int, weights: str | Path, search_roots: Iterable[Path] = (),
                   preferred: Iterable[Path] = ()) -> Any:
    """The first tokenizer for `kind` ("clip_l" | "t5xxl") that fits `vocab_rows` (order: module docstring)."""
    return find_fitting_tokenizer(SEARCHES[kind], vocab_rows, weights, search_roots, preferred)
