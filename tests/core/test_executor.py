"""Executor: order, lazy inputs, list semantics, interrupt, errors, events and caching."""

import threading

import pytest

from engine.core.cache import OutputCache
from engine.core.context import InterruptFlag
from engine.core.executor import Executor
from engine.core.registry import NodeRegistry
from engine.core.schema import Int, node
from tests.support.toy_nodes import CALLS, toy_registry


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.clear()


def run(executor, prompt, **kw):
    events = []
    result = executor.execute(prompt, "p1", on_event=lambda t, d: events.append((t, d)), **kw)
    return result, events


def shown(result, node_id):
    return result.outputs[node_id]["text"]


def test_runs_only_what_outputs_need_in_order():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Number", "inputs": {"value": 3}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "Number", "inputs": {"value": 9}}}
    result, events = run(ex, prompt)
    assert result.status == "success"
    assert shown(result, "4") == ["5"]
    assert result.executed == ["1", "2", "3", "4"]
    types = [t for t, _ in events]
    assert types[0] == "execution_start" and types[1] == "execution_cached"
    assert types[-2:] == ["execution_success", "executing"]
    assert events[-1][1]["node"] is None
    assert [d["node"] for t, d in events if t == "executing"][:-1] == ["1", "2", "3", "4"]
    executed = [d for t, d in events if t == "executed"]
    assert executed == [{"node": "4", "display_node": "4", "output": {"text": ["5"]}, "prompt_id": "p1"}]


def test_cache_rerun_executes_nothing_and_change_reruns_descendants_only():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Number", "inputs": {"value": 3}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    run(ex, prompt)
    result, events = run(ex, prompt)
    assert result.executed == []
    assert result.cached == ["1", "2", "3", "4"]
    assert shown(result, "4") == ["5"]  # cached output node still reports its ui
    assert any(t == "executed" for t, _ in events)
    prompt["2"]["inputs"]["value"] = 4
    result, _ = run(ex, prompt)
    assert result.executed == ["2", "3", "4"]
    assert shown(result, "4") == ["6"]


def test_identical_nodes_share_a_cache_entry_unless_not_idempotent():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Number", "inputs": {"value": 2}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    run(ex, prompt)
    assert CALLS["Number"] == 1


def test_is_changed_nan_always_reruns():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Volatile", "inputs": {"value": 2}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    run(ex, prompt)
    run(ex, prompt)
    assert CALLS["Volatile"] == 2


def test_lazy_switch_evaluates_only_the_needed_branch():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Number", "inputs": {"value": 7}},
              "4": {"class_type": "Switch", "inputs": {"switch": True, "on_false": ["2", 0], "on_true": ["3", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}
    result, _ = run(ex, prompt)
    assert result.status == "success" and shown(result, "5") == ["7"]
    assert CALLS["Fail"] == 0
    prompt["4"]["inputs"]["switch"] = False
    result, _ = run(ex, prompt)
    assert result.status == "error" and CALLS["Fail"] == 1


def test_output_list_fans_out_and_input_list_gathers():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 4}},
              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2.0, "mode": "round"}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Sum", "inputs": {"values": ["2", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}
    result, _ = run(ex, prompt)
    assert CALLS["Scale"] == 4
    assert shown(result, "3") == ["0", "2", "4", "6"]
    assert shown(result, "5") == ["12"]
    assert CALLS["Sum"] == 1


def test_failure_stops_descendants_only_and_keeps_cache():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}}}
    result, events = run(ex, prompt)
    assert result.status == "error"
    assert shown(result, "5") == ["2"]
    assert "3" not in result.outputs
    error = result.error
    assert error["node_id"] == "2" and error["node_type"] == "Fail"
    assert error["exception_type"] == "ValueError" and "cannot handle 1" in error["exception_message"]
    assert error["current_inputs"] == {"x": [1]}
    assert error["traceback"]
    assert "execution_success" not in [t for t, _ in events]
    assert [t for t, _ in events][-1] == "executing"
    result, _ = run(ex, prompt)
    assert CALLS["Number"] == 1  # cached across the failed prompt


def test_interrupt_from_progress_callback():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Steps", "inputs": {"x": ["1", 0], "steps": 100}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    seen = []
    token = InterruptFlag()

    def on_event(event, data):
        seen.append((event, data))
        if event == "progress" and data["value"] == 5:
            token.set()

    result = ex.execute(prompt, "p2", on_event=on_event, interrupt=token)
    assert result.status == "interrupted"
    progress = [d["value"] for t, d in seen if t == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    interrupted = [d for t, d in seen if t == "execution_interrupted"][0]
    assert interrupted["node_id"] == "2" and interrupted["node_type"] == "Steps"
    assert interrupted["executed"] == ["1"]
    # the next prompt runs normally: each run has its own token
    result = ex.execute(prompt, "p3")
    assert result.status == "success"


def test_interrupt_between_nodes_from_another_thread():
    ex = Executor(toy_registry())
    started = threading.Event()
    token = InterruptFlag()
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Steps", "inputs": {"x": ["1", 0], "steps": 1}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}

    def on_event(event, data):
        if event == "executing" and data["node"] == "1":
            started.set()
            token.set()

    result = ex.execute(prompt, "p", on_event=on_event, interrupt=token)
    assert started.is_set() and result.status == "interrupted"
    assert CALLS["Steps"] == 0


def test_a_run_given_its_own_token_uses_it_and_never_clears_it():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    token = InterruptFlag()
    token.set()  # interrupted before the run starts (a backend's cancel of a prompt not started yet)
    result, events = run(ex, prompt, interrupt=token)
    assert result.status == "interrupted" and token.is_set() and CALLS["Number"] == 0
    assert [d for t, d in events if t == "execution_interrupted"][0]["node_id"] == "1"
    stopped = InterruptFlag()

    def stop_at_step_2(event, data):
        if event == "progress" and data["value"] == 2:
            stopped.set()

    steps = {"1": {"class_type": "Number", "inputs": {"value": 1}},
             "2": {"class_type": "Steps", "inputs": {"x": ["1", 0], "steps": 10}},
             "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    assert ex.execute(steps, "own", on_event=stop_at_step_2, interrupt=stopped).status == "interrupted"
    assert ex.execute(steps, "next").status == "success"  # other runs do not see that token


def test_previews_go_to_the_runs_own_callback():
    @node("Previewing", inputs=[Int("value", 1)], outputs=["INT"])
    def previewing(ctx, value):
        ctx.progress(1, 1, preview=f"picture {value}")
        return (value,)

    ex = Executor(NodeRegistry([previewing, *toy_registry()]))
    prompt = {"1": {"class_type": "Previewing", "inputs": {"value": 7}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    seen = []
    result = ex.execute(prompt, "pv", on_preview=lambda *args: seen.append(args))
    assert result.status == "success" and seen == [("pv", "1", "picture 7")]
    assert ex.execute({**prompt, "1": {"class_type": "Previewing", "inputs": {"value": 8}}}, "quiet").status == \
        "success"  # no callback: the preview is dropped
    assert seen == [("pv", "1", "picture 7")]


def test_execution_blocker_propagates_silently():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Block", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    result, _ = run(ex, prompt)
    assert result.status == "success" and CALLS["Add"] == 0 and CALLS["Show"] == 0


def test_history_messages_and_meta():
    ex = Executor(toy_registry())
    result, _ = run(ex, {"1": {"class_type": "Number", "inputs": {"value": 1}},
                         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert result.meta["2"] == {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}


def test_cache_bounded_by_entries_and_bytes():
    cache = OutputCache(max_entries=2)
    for key in "abc":
        cache.put(key, [[1]])
    assert "a" not in cache and "b" in cache and "c" in cache
    cache.get("b")
    cache.put("d", [[1]])
    assert "c" not in cache and "b" in cache  # least recently used goes first

    class Blob:
        nbytes = 600

    sized = OutputCache(max_entries=100, max_bytes=1000)
    sized.put("x", [[Blob()]])
    sized.put("y", [[Blob()]])
    assert "x" not in sized and "y" in sized and sized.nbytes == 600
    assert sized.hits == 0 and sized.get("y") is not None and sized.hits == 1


def test_ten_thousand_node_chain_runs():
    ex = Executor(toy_registry())
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}}
    for i in range(2, 10_001):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": ["1", 0]}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": ["10000", 0]}}
    result = ex.execute(prompt, "long")
    assert result.status == "success" and shown(result, "out") == ["10000"]


def test_a_cycle_reaching_the_executor_is_an_execution_error_naming_it():
    ex = Executor(toy_registry())
    result, events = run(ex, {"1": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
                              "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
                              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    assert result.status == "error"
    assert result.error["exception_type"] == "graph.DependencyCycleError"
    assert result.error["exception_message"].startswith("Dependency cycle detected: ")
    assert "1" in result.error["exception_message"] and "2" in result.error["exception_message"]
    assert [t for t, _ in events][-1] == "executing"
