"""Regional compilation: each repeated transformer block class compiled once (TorchCompileModel, --compile).

"regional" compiles the forward of every block in `transformer_blocks` / `single_transformer_blocks`, the
way diffusers' `compile_repeated_blocks` does: blocks of one class share one compiled code object, since
their weights are graph inputs, not constants. "full" compiles the whole transformer's forward, under the
memory manager's forward wrapper (out-of-memory retry), which stays eager (see _compile_full). Dynamic shapes are
off by default (`dynamic=False`): a new image size compiles once more, and every graph dynamo hands the
backend is counted (`COMPILES`). The graphs every first image needs (one per block class; FluxSingleTransformerBlock
two, see EXPECTED_GRAPHS) are logged at debug level; any further graph means dynamo's guards failed (a new
image size, or something else dynamo saw change) and is logged at info level without guessing the cause.
The `cudagraphs` backend is refused off CUDA (torch only warns, per block class, and runs eager).

The compiled forward is set on the block instance and stays there: moving the module between devices
keeps it, and LoRA patches (engine/models/lora/patch.py swaps `param.data` in place, same shapes) do not
recompile. Step caches wrap it from outside (engine/sampling/step_cache/blocks.py), never inside.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Callable

import torch

from engine.sampling.step_cache.base import log
from engine.sampling.step_cache.blocks import transformer_blocks
from engine.sampling.step_cache.settings import COMPILE, CompileSettings

MODES = ("none", "regional", "full")
BACKENDS = ("inductor", "cudagraphs", "eager", "aot_eager")
COMPILES: Counter = Counter()  # graphs compiled, by block class (or transformer class for "full")
# Graphs a first image compiles by design: FLUX.1's first single block gets an input with other strides.
EXPECTED_GRAPHS = {"FluxSingleTransformerBlock": 2}
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
        count = COMPILES[label]
        if count <= EXPECTED_GRAPHS.get(label, 1):
            log.debug("torch.compile: %s compiled (graph %d, expected)", label, count)
        else:
            log.info("torch.compile: %s recompiled (graph %d; dynamo's guards failed: set TORCH_LOGS=recompiles "
                     "to see why)", label, count)
        return inner(graph, example_inputs)

    return compile_graph


def check_backend(settings: CompileSettings | None, device_type: str) -> None:
    """Refuse `cudagraphs` when the run samples on a device other than CUDA (it can only fail there)."""
    if settings is not None and settings.backend == "cudagraphs" and device_type != "cuda":
        raise ValueError(f"TorchCompileModel: backend 'cudagraphs' needs a CUDA device, but this run samples on "
                         f"{device_type!r}; choose backend 'inductor'")


def compile_transformer(transformer: Any, settings: CompileSettings, device_type: str | None = None) -> None:
    """Compile `transformer` as `settings` ask (mode "none": back to eager); a no-op when it already is.
    `device_type`: the device the run samples on (None: the transformer's own)."""
    if settings.mode not in MODES or settings.backend not in BACKENDS:
        raise ValueError(f"compile mode {settings.mode!r} / backend {settings.backend!r}: expected a mode of "
                         f"{list(MODES)} and a backend of {list(BACKENDS)}")
    if settings.mode != "none":
        check_backend(settings, device_type or _device_type(transformer))
    key = (settings.backend, settings.mode, settings.dynamic)
    if getattr(transformer, _MARK, None) == key:
        return
    uncompile_transformer(transformer)
    if settings.mode == "none":
        return
    if settings.mode == "full":
        _compile_full(transformer, settings)
    else:
        for _, block in transformer_blocks(transformer):
            block.forward = _bound(_compiled(type(block), settings), block)
    setattr(transformer, _MARK, key)
    log.info("torch.compile: %s (%s, backend %s, dynamic %s)", type(transformer).__name__, settings.mode,
             settings.backend, settings.dynamic)


def _device_type(transformer: Any) -> str:
    parameter = next(transformer.parameters(), None)
    return parameter.device.type if parameter is not None else "cpu"


_FULL = "_fluxgraph_full_forward"  # (wrapper, eager forward) while the full mode's swap is in place


def _compile_full(transformer: Any, settings: CompileSettings) -> None:
    """Compile the transformer's own forward *under* the memory manager's forward wrapper (its placement and
    out-of-memory retry read free memory and the LoRA patch registry: traced, they broke the graph and failed
    dynamo's guards). The wrapper (engine/memory/recovery.py) calls whatever its `__wrapped__` holds: the
    compiled forward goes there. Unwrapped modules: nn.Module.compile's slot."""
    compiled = partial(torch.compile, dynamic=settings.dynamic,
                       backend=_counting_backend(settings.backend, type(transformer).__name__))
    wrapper = vars(transformer).get("forward")
    inner = getattr(wrapper, "__wrapped__", None)
    if inner is None:
        transformer._compiled_call_impl = compiled(transformer._call_impl)
        return
    wrapper.__wrapped__ = compiled(inner)
    setattr(transformer, _FULL, (wrapper, inner))


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
    swapped = transformer.__dict__.pop(_FULL, None)
    if swapped is not None:
        wrapper, inner = swapped
        wrapper.__wrapped__ = inner
    for _, block in transformer_blocks(transformer):
        block.__dict__.pop("forward", None)
    delattr(transformer, _MARK)
