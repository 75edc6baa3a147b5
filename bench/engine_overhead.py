"""Per-node engine overhead on no-model graphs; prints JSON.

Measures validation + execution of toy-node graphs: a 100-node chain and a 100-node wide graph (first run
and fully cached re-run), and 1,000- and 10,000-node chains, to show the cost is linear in the node count.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.executor import Executor  # noqa: E402
from engine.core.validate import validate_prompt  # noqa: E402
from tests.support.toy_nodes import toy_registry  # noqa: E402


def chain(n: int) -> dict:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}}
    for i in range(2, n):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": ["1", 0]}}
    prompt[str(n)] = {"class_type": "Show", "inputs": {"value": [str(n - 1), 0]}}
    return prompt


def wide(n: int) -> dict:
    """One source, n/2 independent nodes reading it, each feeding its own output node."""
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}}
    half = (n - 1) // 2
    for i in range(half):
        prompt[f"a{i}"] = {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}}
        prompt[f"s{i}"] = {"class_type": "Show", "inputs": {"value": [f"a{i}", 0]}}
    return prompt


def timed_run(prompt: dict, executor: Executor) -> float:
    start = time.perf_counter()
    result = validate_prompt(prompt, executor.registry)
    assert result.ok, result.error
    outcome = executor.execute(result.prompt, "bench", outputs=result.outputs, on_event=lambda t, d: None)
    assert outcome.status == "success"
    return time.perf_counter() - start


def measure(prompt: dict, repeats: int = 5) -> dict:
    firsts, cached = [], []
    for _ in range(repeats):
        executor = Executor(toy_registry())
        firsts.append(timed_run(prompt, executor))
        cached.append(timed_run(prompt, executor))
    n = len(prompt)
    first, again = statistics.median(firsts), statistics.median(cached)
    return {"nodes": n, "first_run_ms": round(first * 1e3, 3), "cached_rerun_ms": round(again * 1e3, 3),
            "per_node_uncached_ms": round(first * 1e3 / n, 4), "per_node_cached_ms": round(again * 1e3 / n, 4)}


def main() -> None:
    report = {
        "chain_100": measure(chain(100)),
        "wide_100": measure(wide(100)),
        "chain_1000": measure(chain(1000), repeats=3),
        "chain_10000": measure(chain(10_000), repeats=1),
        "targets": {"per_node_uncached_ms": 0.2, "cached_rerun_100_ms": 20.0},
        "comfyui_reference": {"per_node_ms": 2.0, "cached_chain_100_ms": 118, "chain_978_s": 30,
                              "max_chain": 980},
    }
    c100, c10k = report["chain_100"], report["chain_10000"]
    report["linearity_10000_vs_100_per_node"] = round(c10k["per_node_uncached_ms"] / c100["per_node_uncached_ms"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
