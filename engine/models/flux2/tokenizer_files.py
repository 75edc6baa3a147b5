"""The Qwen3 (klein) and Mistral (dev) tokenizers of FLUX.2, found offline (engine/models/common/tokenizer_files.py).

Candidates for an encoder whose embedding table has V rows:
1. the pipeline's `tokenizer/` folder (or the transformers folder itself) when loading a folder;
2. `models/tokenizers/qwen3/` or `models/tokenizers/mistral3/`, then `<kind>-*/` siblings (the tiny zoo's
   `qwen3-tiny/`), under every directory registered for the `tokenizers` folder key.
A folder is used when it holds `tokenizer.json`, its vocabulary fits the weights (V - 1024 < tokens <= V:
Qwen3 pads 151669 tokens to 151936 rows), it is of the right family (Qwen's `<|im_start|>`, Mistral's
`[INST]` control token) and it has a chat template (tokenizer_config.json, chat_template.jinja or
chat_template.json): FLUX.2 formats every prompt as a conversation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.models.common.safetensors_io import ModelFileError
from engine.models.common.tokenizer_files import TokenizerSearch, find_fitting_tokenizer

TOKENIZER_KINDS = {"qwen3": "qwen3", "mistral": "mistral3"}
TOKENIZER_HELP = {
    "qwen3": "the Qwen3 tokenizer (tokenizer.json, tokenizer_config.json with its chat template), as in the "
             "`tokenizer/` folder of black-forest-labs/FLUX.2-klein-4B or Qwen/Qwen3-4B",
    "mistral": "the Mistral Small 3.1 tokenizer (tokenizer.json, tokenizer_config.json and its chat template), as "
               "in the `tokenizer/` folder of black-forest-labs/FLUX.2-dev",
}
VOCAB_SLACK = 1024
FAMILY_TOKENS = {"qwen3": "<|im_start|>", "mistral": "[INST]"}


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            try:
                template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(template, str):
                return template
    return None


def load_flux2_tokenizer_dir(folder: Path) -> Any:
    """A fast tokenizer from `folder` with its chat template attached (ModelFileError when unreadable)."""
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise ModelFileError(folder, f"could not load the tokenizer in this folder: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _chat_template(folder)
    if tokenizer.pad_token is None:
        raise ModelFileError(folder, "this tokenizer defines no padding token; FLUX.2 pads prompts to 512 tokens")
    return tokenizer


def _refusal(architecture: str) -> Callable[[Any, int], str | None]:
    """Why a tokenizer does not fit: its vocabulary (V - 1024 < tokens <= V), its family, no chat template."""
    def refusal(tokenizer: Any, vocab_rows: int) -> str | None:
        size = len(tokenizer)
        if not vocab_rows - VOCAB_SLACK < size <= vocab_rows:
            return f"{size} tokens"
        if FAMILY_TOKENS[architecture] not in tokenizer.get_vocab():
            return f"not a {architecture} tokenizer: no {FAMILY_TOKENS[architecture]} token"
        if not tokenizer.chat_template:
            return "no chat template"
        return None
    return refusal


SEARCHES = {architecture: TokenizerSearch(name=architecture, folder=folder, help=TOKENIZER_HELP[architecture],
                                          readable=lambda path: (path / "tokenizer.json").is_file(),
                                          load=load_flux2_tokenizer_dir, refusal=_refusal(architecture),
                                          refused="not usable")
            for architecture, folder in TOKENIZER_KINDS.items()}


def find_flux2_tokenizer(architecture: str, vocab_rows: int, weights: str | Path, search_roots: Iterable[Path] = (),
                         preferred: Iterable[Path] = ()) -> Any:
    """The first tokenizer that fits (order: module docstring), or TokenizerMissingError saying what to put where."""
    return find_fitting_tokenizer(SEARCHES[architecture], vocab_rows, weights, search_roots, preferred)
