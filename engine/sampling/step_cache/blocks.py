"""What the block-level caches share: the transformer's blocks, their argument and output layout, and
temporarily wrapped `forward`s.

The layouts are diffusers' TransformerBlockRegistry entries for the FLUX blocks (index of hidden_states and
encoder_hidden_states in a block's output tuple; None: the block returns one tensor). A wrapper replaces a
block's `forward` on the instance (nn.Module.__call__ looks it up there) and calls the previous one, so it
sits outside a compiled block (engine/sampling/step_cache/compile.py) and leaves no trace once removed.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class BlockLayout:
    hidden_index: int
    encoder_index: int | None  # None: the block returns hidden_states alone


LAYOUTS = {
    "FluxTransformerBlock": BlockLayout(1, 0),
    "FluxSingleTransformerBlock": BlockLayout(1, 0),
    "Flux2TransformerBlock": BlockLayout(1, 0),
    "Flux2SingleTransformerBlock": BlockLayout(0, None),
}


def transformer_blocks(transformer: Any) -> list[tuple[str, torch.nn.Module]]:
    """(name, block) of every repeated block, double blocks first, in call order."""
    found = []
    for list_name in BLOCK_LISTS:
        blocks = getattr(transformer, list_name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            found.extend((f"{list_name}.{i}", block) for i, block in enumerate(blocks))
    if not found:
        raise ValueError(f"{type(transformer).__name__} has no transformer_blocks: step caching needs a FLUX "
                         "transformer")
    return found


def layout(block: torch.nn.Module) -> BlockLayout:
    try:
        return LAYOUTS[type(block).__name__]
    except KeyError:
        raise ValueError(f"step caching does not know the block {type(block).__name__}") from None


_SIGNATURES: dict[type, inspect.Signature] = {}


def argument(block: torch.nn.Module, name: str, args: tuple, kwargs: dict) -> Any:
    """A forward argument by name, passed by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    cls = type(block)
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    names = [p for p in _SIGNATURES[cls].parameters if p != "self"]
    index = names.index(name)
    return args[index] if index < len(args) else None


def pack_output(lay: BlockLayout, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    """A block's output from its hidden (and encoder) states, in the block's own layout."""
    if lay.encoder_index is None:
        return hidden
    out: list[Any] = [None] * (max(lay.hidden_index, lay.encoder_index) + 1)
    out[lay.hidden_index] = hidden
    out[lay.encoder_index] = encoder
    return tuple(out)


def split_output(lay: BlockLayout, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, tuple):
        return output[lay.hidden_index], (output[lay.encoder_index] if lay.encoder_index is not None else None)
    return output, None


Wrapper = Callable[..., Any]  # wrapper(previous_forward, *args, **kwargs)


@contextmanager
def wrapped_forwards(modules: list[tuple[torch.nn.Module, Wrapper]]) -> Iterator[None]:
    """Route each module's forward through its wrapper for the duration; restore exactly afterwards."""
    saved = []
    try:
        for module, wrapper in modules:
            had_own = "forward" in module.__dict__
            previous = module.__dict__.get("forward")
            inner = module.forward

            def forward(*args: Any, _wrapper: Wrapper = wrapper, _inner: Callable = inner, **kwargs: Any) -> Any:
                return _wrapper(_inner, *args, **kwargs)

            module.forward = forward
            saved.append((module, had_own, previous))
        yield
    finally:
        for module, had_own, previous in reversed(saved):
            if had_own:
                module.forward = previous
            else:
                del module.forward


class BlockCache:
    """Mixin for caches that act inside the transformer: per branch state, block wrappers per call."""

    states: dict

    def new_state(self) -> Any:
        raise NotImplementedError

    def wrappers(self, transformer: Any, state: Any) -> list[tuple[torch.nn.Module, Wrapper]]:
        raise NotImplementedError

    def computed(self, state: Any) -> bool:
        """Whether the call that just ended ran the transformer in full."""
        return bool(state.should_compute)

    def velocity(self, branch: Any, original: Callable, *args: Any) -> torch.Tensor:
        state = self.states.get(branch)
        if state is None:
            state = self.states[branch] = self.new_state()
        with wrapped_forwards(self.wrappers(self.denoiser.transformer, state)):
            out = original(*args)
        self.record(branch, self.computed(state))
        return out
