"""Shared by the training benchmarks (bench/train_segment.py, bench/train_lora.py): each loop runs in its own
process (`run_measured`), ours and the reference in alternating rounds (a busy moment of a shared machine then
does not favour one side); each side's best round is kept and the speed and memory ratios reported."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Callable


def run_measured(command: list[str]) -> dict[str, Any]:
    """Run one worker process; its last stdout line is its JSON result, to which the process's peak resident
    memory is added (unless it measured GPU memory). A failed worker gives {"error": its last lines}."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    out = process.stdout.read() if process.stdout else ""
    err = process.stderr.read() if process.stderr else ""
    if status != 0 or not out.strip():
        return {"error": err.strip().splitlines()[-3:] if err else f"exit status {status}"}
    result = json.loads(out.strip().splitlines()[-1])
    if "peak_gpu_bytes" not in result:
        result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports kilobytes
    return result


def alternate_rounds(report: dict[str, Any], rounds: int, reference: str,
                     run_worker: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Fill `report` with "ours" and `reference` (their best rounds), "speed_ratio" and "memory_ratio";
    `run_worker("ours" | "plain")` runs one round of a side in its own process."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], reference: []}
    for _ in range(rounds):
        runs["ours"].append(run_worker("ours"))
        runs[reference].append(run_worker("plain"))
    for key, results in runs.items():
        good = [r for r in results if r.get("steps_per_second")]
        report[key] = max(good, key=lambda r: r["steps_per_second"]) if good else results[-1]
        report[key]["all_steps_per_second"] = [round(r.get("steps_per_second") or 0, 4) for r in results]
    ours, plain = report["ours"].get("steps_per_second"), report[reference].get("steps_per_second")
    if ours and plain:
        report["speed_ratio"] = round(ours / plain, 3)
    for key in ("peak_rss_mb", "peak_gpu_bytes"):
        if key in report["ours"] and key in report[reference]:
            report["memory_ratio"] = round(report["ours"][key] / report[reference][key], 3)
    return report
