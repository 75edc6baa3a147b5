"""Finding a tokenizer offline, for any text encoder: single-file encoder weights never include one.

Each family describes its tokenizer kinds (`TokenizerSearch`: FLUX.1's CLIP-L and T5 in
engine/models/flux1/tokenizer_files.py, FLUX.2's Qwen3 and Mistral in engine/models/flux2/tokenizer_files.py);
`find_fitting_tokenizer` does the search they share. Candidates, in order:
1. the folders the caller prefers (a pipeline's own `tokenizer/` folder when loading a diffusers folder);
2. `<root>/<folder>/`, then its `<folder>-*/` siblings (the tiny zoo's `clip_l-tiny/`), under every directory
   registered for the `tokenizers` folder key;
3. files the kind finds elsewhere (CLIP's merges file inside an installed package).
The first candidate whose tokenizer fits the encoder's vocabulary is used, so the tiny zoo's tokenizers are
never paired with real weights. If none does, `TokenizerMissingError` says what to put where and why each
candidate was refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from engine.models.common.safetensors_io import ModelFileError


class TokenizerMissingError(ModelFileError):
    """No tokenizer that fits these text encoder weights could be found offline."""


@dataclass(frozen=True)
class TokenizerSearch:
    name: str  # in messages: "clip_l", "qwen3"
    folder: str  # under each tokenizers root: "clip_l", "mistral3"
    help: str  # what to put there, and where to get it
    readable: Callable[[Path], bool]  # the folder holds files this kind can load
    load: Callable[[Path], Any]  # a folder (or a file found by `elsewhere`) -> tokenizer
    refusal: Callable[[Any, int], str | None]  # (tokenizer, vocabulary rows) -> why it does not fit, or None
    refused: str  # how the message introduces the refused candidates
    elsewhere: Callable[[], list[Path]] = list  # candidates after the folders


def candidate_dirs(search_roots: Iterable[Path], name: str) -> list[Path]:
    """`<root>/<name>` then `<root>/<name>-*` for each root that has them."""
    found: list[Path] = []
    for root in search_roots:
        root = Path(root)
        if (root / name).is_dir():
            found.append(root / name)
        if root.is_dir():
            found.extend(sorted(p for p in root.glob(f"{name}-*") if p.is_dir()))
    return found


def find_fitting_tokenizer(search: TokenizerSearch, vocab_rows: int, weights: str | Path,
                           search_roots: Iterable[Path] = (), preferred: Iterable[Path] = ()) -> Any:
    """The first tokenizer of `search`'s kind that fits `vocab_rows` (order: module docstring)."""
    roots = list(search_roots)
    folders = [Path(p) for p in preferred] + candidate_dirs(roots, search.folder)

    def candidates() -> Iterator[Path]:
        yield from (folder for folder in folders if folder.is_dir() and search.readable(folder))
        yield from search.elsewhere()  # looked for only when no folder fits

    rejected: list[str] = []
    for candidate in candidates():
        tokenizer = search.load(candidate)
        refusal = search.refusal(tokenizer, vocab_rows)
        if refusal is None:
            return tokenizer
        rejected.append(f"{candidate} ({refusal})")
    where = roots[0] / search.folder if roots else Path("models/tokenizers") / search.folder
    message = (f"no {search.name} tokenizer found for these weights ({vocab_rows} embedding rows). Put "
               f"{search.help} into {where}/")
    if rejected:
        message += f". Found but {search.refused}: {', '.join(rejected)}"
    raise TokenizerMissingError(weights, message)
