"""The step-cache nodes in real graphs on the tiny FLUX.1 and FLUX.2 models: at threshold 0 every method
equals the uncached run bit for bit; caches skip at thresholds that skip on random tiny weights; a cache
lives for one run only (nothing leaks into the next prompt or into the shared model); the sampler node
reports the skipped steps to the client."""

from __future__ import annotations

import pytest
import torch

from tests.support import flux2 as f2
from tests.support.flux import make_runtime, run_prompt, txt2img_prompt
from tests.support.step_cache import tail_probe, with_cache

pytestmark = pytest.mark.usefixtures("single_torch_thread")

STEPS = 6
ZERO = {  # the "never skip" setting of each method
    "FirstBlockCache": {"threshold": 0.0},
    "MagCache": {"threshold": 0.0, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": "1.02, 1.01, 0.99"},
    "TaylorSeerCache": {"cache_interval": 1, "disable_cache_before_step": 0, "disable_cache_after_step": -1,
                        "max_order": 1, "taylor_factors_dtype": "bfloat16"},
    "EasyCache": {"reuse_threshold": 0.0, "start_percent": 0.0, "end_percent": 1.0, "verbose": False},
    "LazyCache": {"reuse_threshold": 0.0, "start_percent": 0.0, "end_percent": 1.0, "verbose": False},
}
SKIPPING = {  # thresholds that skip on the random tiny FLUX.1 (its outputs change a lot between steps)
    "FirstBlockCache": {"threshold": 1.0},
    "MagCache": {"threshold": 0.3, "max_skip_steps": 3, "retention_ratio": 0.2},
    "TaylorSeerCache": {"cache_interval": 2, "disable_cache_before_step": 2, "disable_cache_after_step": -1,
                        "max_order": 1, "taylor_factors_dtype": "float32"},
    "EasyCache": {"reuse_threshold": 1.2, "start_percent": 0.0, "end_percent": 1.0, "verbose": True},
    "LazyCache": {"reuse_threshold": 0.9, "start_percent": 0.0, "end_percent": 1.0, "verbose": False},
}


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


def _events(runtime, prompt):
    checked = runtime.validate(prompt)
    assert checked.ok, checked.node_errors
    events = []
    result = runtime.executor.execute(checked.prompt, prompt_id="p", on_event=lambda t, d: events.append((t, d)))
    assert result.status == "success", result.errors
    return [d for t, d in events if t == "fluxgraph.step_cache"]


@pytest.mark.parametrize("node", list(ZERO))
def test_threshold_zero_equals_the_uncached_run_bit_for_bit(runtime, node):
    for graph in (lambda: txt2img_prompt(steps=STEPS, cfg=2.0, negative="blurry"),
                  lambda: f2.flux2_graph("klein", steps=STEPS)):
        uncached, _ = run_prompt(runtime, graph())
        cached, _ = run_prompt(runtime, with_cache(graph(), node, **ZERO[node]))
        assert torch.equal(cached, uncached)


@pytest.mark.parametrize("node", list(SKIPPING))
def test_each_cache_skips_and_reports_its_skipped_steps(runtime, node):
    uncached, _ = run_prompt(runtime, txt2img_prompt(steps=STEPS))
    prompt = with_cache(txt2img_prompt(steps=STEPS), node, **SKIPPING[node])
    reports = _events(runtime, prompt)
    assert len(reports) == 1 and reports[0]["node"] == "9" and reports[0]["method"]
    report = reports[0]
    assert report["steps"] == STEPS and report["skipped_steps"] >= 1
    assert report["transformer_evaluations"] == STEPS - report["skipped_steps"]  # cfg 1: one call a step
    cached, _ = run_prompt(runtime, prompt)
    assert float((cached - uncached).abs().mean()) >= 1e-3


def test_a_cache_never_leaks_into_the_next_prompt_or_the_shared_model(runtime):
    first, _ = run_prompt(runtime, with_cache(txt2img_prompt(steps=STEPS, seed=1), "FirstBlockCache",
                                              threshold=1.3))
    with tail_probe() as calls:
        again, _ = run_prompt(runtime, with_cache(txt2img_prompt(steps=STEPS, seed=2), "FirstBlockCache",
                                                  threshold=1.3))
    fresh_runtime = make_runtime()
    with tail_probe() as fresh_calls:
        fresh, _ = run_prompt(fresh_runtime, with_cache(txt2img_prompt(steps=STEPS, seed=2), "FirstBlockCache",
                                                        threshold=1.3))
    assert False in calls and calls[0] is True  # it skipped, and its first step had no state to reuse
    assert torch.equal(again, fresh) and calls == fresh_calls  # the first prompt's state did not carry over
    # the shared (cached) loader output has no cache left on it: the plain model gives the uncached image
    plain, _ = run_prompt(runtime, txt2img_prompt(steps=STEPS, seed=2))
    plain_fresh, _ = run_prompt(make_runtime(), txt2img_prompt(steps=STEPS, seed=2))
    assert torch.equal(plain, plain_fresh) and not torch.equal(plain, again)
    assert not torch.equal(first, again)


def test_cache_nodes_reject_a_model_that_is_not_flux():
    from nodes.flux.speed import easy_cache, first_block_cache

    with pytest.raises(TypeError, match="EasyCache: the model input must be a FLUX"):
        easy_cache(None, model=object(), reuse_threshold=0.2, start_percent=0.15, end_percent=0.95)
    with pytest.raises(TypeError, match="FirstBlockCache"):
        first_block_cache(None, model="model", threshold=0.1)


def test_easycache_and_lazycache_inputs_are_comfyuis():
    from engine.core.registry import NodeRegistry

    registry = NodeRegistry().discover("nodes")
    for name in ("EasyCache", "LazyCache"):
        info = registry[name].object_info()
        required = info["input"]["required"]
        assert list(required) == ["model", "reuse_threshold", "start_percent", "end_percent", "verbose"]
        assert required["reuse_threshold"][1] == {"default": 0.2, "min": 0.0, "max": 3.0, "step": 0.01,
                                                  "tooltip": "The threshold for reusing cached steps."}
        assert required["start_percent"][1]["default"] == 0.15 and required["end_percent"][1]["default"] == 0.95
        assert info["category"] == "advanced/debug/model" and info["experimental"] is True
    compile_info = registry["TorchCompileModel"].object_info()
    assert compile_info["input"]["required"]["backend"][0] == ["inductor", "cudagraphs"]


@pytest.mark.parametrize("workflow", ["flux_kontext_edit.json", "flux_fill_inpaint.json", "flux2_klein_edit.json",
                                      "flux_controlnet_union.json", "flux_depth.json"])
def test_caches_work_on_the_kontext_fill_control_and_flux2_edit_workflows(workflow):
    """Reference tokens (Kontext, FLUX.2 edit), Fill's and Depth's extra channels and ControlNet residuals pass
    through the caches: threshold 0 changes nothing, MagCache (decisions from its ratios only) skips and moves
    the image."""
    from engine.recipes.speed import apply_speed
    from tests.support.conditioning import load_workflow, runtime_with_inputs, saved_png

    runtime = runtime_with_inputs()
    save = next(k for k, n in load_workflow(workflow).items() if n["class_type"] == "SaveImage")

    def run(cache: tuple[str, dict] | None) -> tuple:
        graph = load_workflow(workflow)
        if cache is not None:
            graph = apply_speed(graph, "fast")  # puts a FirstBlockCache in front of the sampler; retune it
            node = next(n for n in graph.values() if n["class_type"] == "FirstBlockCache")
            node["class_type"], extra = cache
            node["inputs"] = {"model": node["inputs"]["model"], **extra}
        checked = runtime.validate(graph)
        assert checked.ok, checked.node_errors
        events: list = []
        result = runtime.executor.execute(checked.prompt, prompt_id="w", on_event=lambda t, d: events.append((t, d)))
        assert result.status == "success", result.errors
        return saved_png(runtime, result, save).astype(float), [d for t, d in events if t == "fluxgraph.step_cache"]

    plain, _ = run(None)
    same, reports = run(("FirstBlockCache", ZERO["FirstBlockCache"]))
    assert (same == plain).all() and reports[0]["skipped_steps"] == 0
    moved, reports = run(("MagCache", {"threshold": 0.3, "max_skip_steps": 3, "retention_ratio": 0.2}))
    assert reports[0]["skipped_steps"] >= 1 and abs(moved - plain).mean() > 0.5


@pytest.mark.parametrize(("node", "inputs", "message"), [
    ("MagCache", {**SKIPPING["MagCache"], "mag_ratios": "1.0, fast, 0.9"}, "mag_ratios must be numbers"),
    ("MagCache", {**SKIPPING["MagCache"], "mag_ratios": "1.0, nan"}, "mag_ratios must be numbers"),
    ("TaylorSeerCache", {**SKIPPING["TaylorSeerCache"], "disable_cache_before_step": 5,
                         "disable_cache_after_step": 3}, "disable_cache_before_step 5 is after"),
    ("TaylorSeerCache", {**SKIPPING["TaylorSeerCache"], "disable_cache_before_step": -2}, "outside 0..10000"),
    ("TaylorSeerCache", {**SKIPPING["TaylorSeerCache"], "disable_cache_after_step": -5}, "outside -1..10000"),
])
def test_literal_inputs_that_can_only_fail_later_fail_validation(runtime, node, inputs, message):
    checked = runtime.validate(with_cache(txt2img_prompt(steps=2), node, **inputs))
    assert not checked.ok
    (node_id, errors), = checked.node_errors.items()
    assert errors["class_type"] == node and message in str(errors["errors"])


def test_valid_cache_inputs_still_pass_validation(runtime):
    for node, inputs in [("MagCache", {**SKIPPING["MagCache"], "mag_ratios": "[1.0, 0.98, 0.95]"}),
                         ("TaylorSeerCache", {**SKIPPING["TaylorSeerCache"], "disable_cache_before_step": 3,
                                              "disable_cache_after_step": 3}),
                         ("EasyCache", {**SKIPPING["EasyCache"], "start_percent": 0.9, "end_percent": 0.1})]:
        checked = runtime.validate(with_cache(txt2img_prompt(steps=2), node, **inputs))
        assert checked.ok, checked.node_errors  # EasyCache start > end: accepted, as ComfyUI does (never caches)


def test_easycache_with_start_after_end_computes_every_step(runtime):
    """ComfyUI accepts start_percent > end_percent; the window is empty, so nothing is skipped."""
    graph = lambda: txt2img_prompt(steps=STEPS, seed=31)  # noqa: E731 - a seed no other test runs (no cached output)
    empty, = _events(runtime, with_cache(graph(), "EasyCache",
                                         **{**SKIPPING["EasyCache"], "start_percent": 0.9, "end_percent": 0.1}))
    skipping, = _events(runtime, with_cache(graph(), "EasyCache", **SKIPPING["EasyCache"]))
    assert empty["skipped_steps"] == 0 and skipping["skipped_steps"] >= 1
