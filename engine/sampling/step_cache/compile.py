"""Regional compilation: each repeated transformer block class compiled once (TorchCompileModel, --compile).

"regional" compiles the forward of every block in `transformer_blocks` / `single_transformer_blocks`, the
way diffusers' `compile_repeated_blocks` does: blocks of one class share one compiled code object, since
their weights are graph inputs, not constants. "full" compiles the whole transformer's call (nn.Module.compile),
leaving the memory manager's forward wrapper (out-of-memory retry) in place. Dynamic shapes are
off by default (`dynamic=False`): a new image size compiles once more, and every graph dynamo hands the
backend is counted (`COMPILES`) and logged, so recompiles show up.

The compiled forward is set on the block instance and stays there: moving the module between devices
keeps it, and LoRA patches (engine/models/lora/patch.py swaps `param.data` in place, same shapes) do not
recompile. Step caches wrap it from outside (engine/sampling/step_cache/blocks.py), never inside.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch

from engine.sampling.step_cache.base import log
from engine.sampling.step_cache.blocks import transformer_blocks
from engine.sampling.step_cache.settings import COMPILE, CompileSettings

MODES = ("none", "regional", "full")
BACKENDS = ("inductor", "cudagraphs", "eager", "aot_eager")
COMPILES: Counter = Counter()  # graphs compiled, by block class (or transformer class for "full")
_MARK = "_fluxgraph_compiled"


def compile_settings(model: Any, memory: Any) -> CompileSettings | None:
    """The model's TorchCompileModel settings, else the server's --compile mode, else None."""
    settings = model.option(COMPILE) if hasattr(model, "option") else None
    if settings is not None:
        return settings if settings.mode != "none" else None
    mode = getattr(getattr(memory, "settings", None), "compile", "none") or "none"
    return CompileSettings(mode=mode) if mode != "none" else None


def _counting_backend(backend: str, label: str) -> Callable:
    from torch._dynamo import lookup_backend  # noqa: PLC0415 - dynamo loads on first compile only

    inner = lookup_backend(backend)

    def compile_graph(graph: Any, example_inputs: Any) -> Any:
        COMPILES[label] += 1
        if COMPILES[label] > 1:
            log.info("torch.compile: %s compiled %d times (a recompile: new shapes, dtype or device)",
                     label, COMPILES[label])
        return inner(graph, example_inputs)

    return compile_graph


def compile_transformer(transformer: Any, settings: CompileSettings) -> None:
    """Compile `transformer` as `settings` ask (mode "none": back to eager); a no-op when it already is."""
    if settings.mode not in MODES or settings.backend not in BACKENDS:
        raise ValueError(f"compile mode {settings.mode!r} / backend {settings.backend!r}: expected a mode of "
                         f"{list(MODES)} and a backend of {list(BACKENDS)}")
    key = (settings.backend, settings.mode, settings.dynamic)
    if getattr(transformer, _MARK, None) == key:
        return
    uncompile_transformer(transformer)
    if settings.mode == "none":
        return
    if settings.mode == "full":  # nn.Module.compile's slot: the memory manager's own forward wrapper stays
        transformer._compiled_call_impl = torch.compile(
            transformer._call_impl, dynamic=settings.dynamic,
            backend=_counting_backend(settings.backend, type(transformer).__name__))
    else:
        for _, block in transformer_blocks(transformer):
            block.forward = _bound(_compiled(type(block), settings), block)
    setattr(transformer, _MARK, key)
    log.info("torch.compile: %s (%s, backend %s, dynamic %s)", type(transformer).__name__, settings.mode,
             settings.backend, settings.dynamic)


_COMPILED: dict[tuple, Callable] = {}


def _compiled(cls: type, settings: CompileSettings) -> Callable:
    """One compiled forward per module class and settings, for the process: blocks of a class share it, and
    compiling a transformer again (after a run without compilation) finds dynamo's cached graphs."""
    key = (cls, settings.backend, settings.dynamic)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(cls.forward, dynamic=settings.dynamic,
                                       backend=_counting_backend(settings.backend, cls.__name__))
    return _COMPILED[key]


def _bound(function: Callable, block: Any) -> Callable:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return function(block, *args, **kwargs)

    return forward


def uncompile_transformer(transformer: Any) -> None:
    """Back to eager forwards (e.g. before compiling with other settings)."""
    if getattr(transformer, _MARK, None) is None:
        return
    transformer._compiled_call_impl = None
    for _, block in transformer_blocks(transformer):
        block.__dict__.pop("forward", None)
    delattr(transformer, _MARK)
