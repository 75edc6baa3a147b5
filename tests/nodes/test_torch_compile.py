"""Regional compilation (TorchCompileModel, `--compile regional`): each repeated block class compiles once
(the single-block class twice: its first block's input has other strides), the compiled blocks give the
eager image, and they survive LoRA patches, offloading and new prompts without recompiling; a new image
size recompiles (dynamic shapes are off) and the counter shows it. Most tests use dynamo's "eager" backend
(the same graphs, guards and recompiles, without inductor's C++ build); one runs inductor."""

from __future__ import annotations

import argparse

import pytest

from engine.core.schema import Socket, node
from engine.core.types import MODEL
from tests.support.flux import make_runtime, run_prompt, txt2img_prompt
from tests.support.step_cache import with_cache

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")


@node("TestCompileEager", inputs=[Socket("model", MODEL)], outputs=[MODEL])
def compile_eager(ctx, model):
    from engine.sampling.step_cache.settings import COMPILE, CompileSettings

    return (model.with_option(COMPILE, CompileSettings(backend="eager")),)


SEEN: list = []  # transformers the full-mode node saw


@node("TestCompileEagerFull", inputs=[Socket("model", MODEL)], outputs=[MODEL])
def compile_eager_full(ctx, model):
    from engine.sampling.step_cache.settings import COMPILE, CompileSettings

    SEEN.append(model.transformer)
    return (model.with_option(COMPILE, CompileSettings(backend="eager", mode="full")),)


@pytest.fixture(scope="module")
def runtime():
    rt = make_runtime()
    rt.registry.register(compile_eager)
    rt.registry.register(compile_eager_full)
    return rt


def _wrapper_calls_eager(transformer) -> bool:
    """Whether the memory manager's forward wrapper calls the class's own (eager) forward: it calls whatever its
    `__wrapped__` holds at the time."""
    called = vars(transformer)["forward"].__wrapped__
    return getattr(called, "__func__", None) is type(transformer).forward


def test_full_mode_compiles_the_forward_under_the_memory_managers_wrapper(runtime):
    """The wrapper (placement, OOM retry, LoRA registry look-ups) stays eager: dynamo never traces it, so
    a second prompt adds no graph."""
    from engine.sampling.step_cache.compile import COMPILES

    plain, _ = run_prompt(runtime, txt2img_prompt(steps=2, seed=8))
    before = COMPILES["FluxTransformer2DModel"]
    compiled, _ = run_prompt(runtime, with_cache(txt2img_prompt(steps=2, seed=8), "TestCompileEagerFull"))
    transformer = SEEN[-1]
    assert not _wrapper_calls_eager(transformer) and transformer._compiled_call_impl is None  # calls the compiled
    assert COMPILES["FluxTransformer2DModel"] - before == 1
    assert float((compiled - plain).abs().max()) <= 1e-5
    run_prompt(runtime, with_cache(txt2img_prompt(steps=2, seed=28), "TestCompileEagerFull"))
    assert COMPILES["FluxTransformer2DModel"] - before == 1  # a new prompt: no recompile
    run_prompt(runtime, txt2img_prompt(steps=2, seed=18))  # no compilation asked: eager again, wrapper kept
    assert _wrapper_calls_eager(transformer) and "forward" in vars(transformer)


def _compiles() -> dict[str, int]:
    from engine.sampling.step_cache.compile import COMPILES

    return {name: COMPILES[name] for name in BLOCKS}


def _delta(before: dict[str, int]) -> dict[str, int]:
    return {name: count - before[name] for name, count in _compiles().items()}


def _lora(graph: dict, model_link: list) -> dict:
    graph["60"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": model_link, "lora_name": "flux1-dev-tiny-lora-comfy.safetensors", "strength_model": 1.0}}
    graph["9"]["inputs"]["model"] = ["60", 0]
    return graph


def test_regional_compile_once_survives_lora_offload_and_new_prompts(runtime):
    plain, _ = run_prompt(runtime, txt2img_prompt(steps=2))
    plain_lora, _ = run_prompt(runtime, _lora(txt2img_prompt(steps=2), ["1", 0]))
    before = _compiles()
    compiled, _ = run_prompt(runtime, with_cache(txt2img_prompt(steps=2), "TestCompileEager"))
    first = _delta(before)
    assert first["FluxTransformerBlock"] == 1 and 1 <= first["FluxSingleTransformerBlock"] <= 2
    assert float((compiled - plain).abs().max()) <= 1e-5

    after_first = _compiles()
    lora, _ = run_prompt(runtime, _lora(with_cache(txt2img_prompt(steps=2), "TestCompileEager"), ["50", 0]))
    assert float((lora - plain_lora).abs().max()) <= 1e-5 and float((lora - plain).abs().mean()) >= 0.01
    runtime.models.offload_all()
    run_prompt(runtime, with_cache(txt2img_prompt(steps=2, seed=9), "TestCompileEager"))
    assert _delta(after_first) == {name: 0 for name in BLOCKS}  # LoRA, offload, new seed: no recompile

    run_prompt(runtime, with_cache(txt2img_prompt(steps=2, width=80, height=48), "TestCompileEager"))
    assert _delta(after_first)["FluxTransformerBlock"] == 1  # a new size: one more graph, counted


def _reported(runtime, prompt) -> list[dict]:
    checked = runtime.validate(prompt)
    events: list = []
    result = runtime.executor.execute(checked.prompt, prompt_id="p", on_event=lambda t, d: events.append((t, d)))
    assert result.status == "success", result.errors
    return [d for t, d in events if t == "fluxgraph.step_cache"]


def test_step_cache_decisions_are_the_same_on_compiled_blocks(runtime):
    """The cache wraps the compiled blocks from outside: the same skipped steps and image."""
    graph = lambda: with_cache(txt2img_prompt(steps=6), "FirstBlockCache", threshold=1.0)  # noqa: E731
    eager, = _reported(runtime, graph())
    compiled_graph = graph()
    compiled_graph["51"] = {"class_type": "TestCompileEager", "inputs": {"model": ["50", 0]}}
    compiled_graph["9"]["inputs"]["model"] = ["51", 0]
    compiled, = _reported(runtime, compiled_graph)
    assert compiled["skipped_at"] == eager["skipped_at"] and eager["skipped_at"]
    assert compiled["transformer_evaluations"] == eager["transformer_evaluations"]


def test_the_compile_flag_reaches_the_sampler_through_the_memory_settings(tmp_path):
    from engine.memory.budget import MemorySettings, add_memory_arguments, settings_from_args
    from engine.memory.manager import MemoryManager
    from engine.sampling.step_cache.compile import compile_settings
    from engine.sampling.step_cache.settings import COMPILE, CompileSettings
    from engine.server import add_serve_arguments, build_config

    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    assert settings_from_args(parser.parse_args(["--compile", "regional"])).compile == "regional"
    assert settings_from_args(parser.parse_args([])).compile == "none"
    serve = argparse.ArgumentParser()
    add_serve_arguments(serve)
    assert build_config(serve.parse_args(["--compile", "regional"])).memory.compile == "regional"

    class Model:
        options: dict = {}

        def option(self, key):
            return self.options.get(key)

    manager = MemoryManager(settings=MemorySettings(compile="regional", device="cpu"))
    assert compile_settings(Model(), manager) == CompileSettings(mode="regional")
    assert compile_settings(Model(), MemoryManager(device="cpu")) is None
    node_choice = Model()
    node_choice.options = {COMPILE: CompileSettings(mode="none")}
    assert compile_settings(node_choice, manager) is None  # the node's choice wins over the flag
    from engine.core.registry import NodeRegistry

    modes = NodeRegistry().discover("nodes")["TorchCompileModel"].object_info(None)["input"]["optional"]["mode"]
    assert "none" in modes[0]  # a workflow can opt out under --compile
    with pytest.raises(ValueError, match="compile mode"):
        MemorySettings(compile="everything")


@pytest.mark.slow
def test_inductor_regional_compile_matches_eager(runtime):
    """The real backend (C++ build on the CPU: ~30 s on two cores)."""
    plain, _ = run_prompt(runtime, txt2img_prompt(steps=2, seed=4))
    before = _compiles()
    compiled, _ = run_prompt(runtime, with_cache(txt2img_prompt(steps=2, seed=4), "TorchCompileModel",
                                                 backend="inductor"))
    assert _delta(before)["FluxTransformerBlock"] == 1
    assert float((compiled - plain).abs().max()) <= 1e-4


@pytest.mark.gpu
def test_regional_compile_on_cuda_survives_offloading_to_the_cpu():
    """On a GPU the blocks are offloaded to the CPU between prompts and come back: no recompile."""
    from engine.memory.manager import MemoryManager

    gpu = make_runtime()
    gpu.registry.register(compile_eager)
    gpu.executor.models = MemoryManager(device="cuda")
    plain, _ = run_prompt(gpu, txt2img_prompt(steps=2, seed=6))
    compiled, _ = run_prompt(gpu, with_cache(txt2img_prompt(steps=2, seed=6), "TestCompileEager"))
    assert float((compiled - plain).abs().max()) <= 1e-3
    before = _compiles()
    gpu.executor.models.offload_all()
    run_prompt(gpu, with_cache(txt2img_prompt(steps=2, seed=7), "TestCompileEager"))
    assert _delta(before) == {name: 0 for name in BLOCKS}


def test_cudagraphs_is_refused_off_cuda_naming_the_input(runtime):
    checked = runtime.validate(with_cache(txt2img_prompt(steps=2), "TorchCompileModel", backend="cudagraphs"))
    assert checked.ok, checked.node_errors
    result = runtime.executor.execute(checked.prompt, prompt_id="c")
    assert result.status != "success"
    assert "TorchCompileModel: backend 'cudagraphs' needs a CUDA device" in str(result.errors)


def test_expected_graphs_log_at_debug_and_a_recompile_at_info_without_guessing_why(caplog):
    import logging

    import torch

    from engine.sampling.step_cache.compile import COMPILES, _counting_backend

    backend = _counting_backend("eager", "TestLabelBlock")
    compiled = torch.compile(lambda x: x * 2, backend=backend, dynamic=False)
    with caplog.at_level(logging.DEBUG, logger="fluxgraph.step_cache"):
        compiled(torch.ones(2))
        compiled(torch.ones(3))  # a new shape: a recompile
    assert COMPILES["TestLabelBlock"] == 2
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if "TestLabelBlock" in r.getMessage()]
    assert levels[0] == (logging.DEBUG, "torch.compile: TestLabelBlock compiled (graph 1, expected)")
    assert levels[1][0] == logging.INFO and "recompiled (graph 2; dynamo's guards failed" in levels[1][1]
    assert "TORCH_LOGS=recompiles" in levels[1][1] and "new shapes" not in levels[1][1]
