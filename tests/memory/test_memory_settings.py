"""Memory flags on the command line and the server, start-up without torch, /system_stats and /free."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import pytest_asyncio

from engine.memory.manager import MemoryManager
from engine.memory.accounting import AccountingBackend, AccountingDevice, SimModel
from engine.memory.budget import GIB, MemorySettings, add_memory_arguments, settings_from_args
from tests.support.waiting import wait_until_async


def parse(*argv: str) -> MemorySettings:
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_flags_give_modes_and_budgets():
    assert parse() == MemorySettings()
    assert parse("--lowvram", "--vram-budget", "6").mode == "lowvram"
    assert parse("--vram-budget", "6").budget_bytes == 6 * GIB
    assert parse("--vram-budget", "0.5", "--reserve-vram", "1").reserve_bytes == GIB
    cpu = parse("--cpu")
    assert cpu.mode == "cpu" and cpu.device == "cpu"
    novram = parse("--novram")
    assert novram.stream_all and not novram.keep_loaded
    high = parse("--highvram")
    assert high.keep_loaded and not high.allow_partial and high.activation_reserve("cuda", 10 * GIB) < GIB


def test_bad_flags_are_refused_with_the_flag_named(capsys):
    with pytest.raises(ValueError, match="--vram-budget must be a positive number of GiB, got 0"):
        parse("--vram-budget", "0")
    with pytest.raises(ValueError, match="--reserve-vram"):
        parse("--reserve-vram", "-1")
    with pytest.raises(SystemExit):
        parse("--lowvram", "--novram")  # one mode at a time
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_activation_reserve_follows_the_estimate_and_the_mode():
    normal, low = MemorySettings(), MemorySettings(mode="lowvram")
    assert normal.activation_reserve("cuda", None) == GIB  # nothing known yet
    assert normal.activation_reserve("cuda", 3 * GIB) == 3 * GIB
    assert low.activation_reserve("cuda", 3 * GIB) == 6 * GIB


def test_fluxgraph_run_and_serve_take_the_flags(tmp_path, capsys):
    from engine.cli import main
    from engine.server import add_serve_arguments, build_config, build_runtime

    assert main(["run", str(tmp_path / "missing.json"), "--vram-budget", "-2"]) == 2
    assert "--vram-budget must be a positive number" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = build_config(parser.parse_args(["--novram", "--vram-budget", "3"]))
    assert config.memory == MemorySettings(mode="novram", budget_bytes=3 * GIB)
    runtime = build_runtime(str(tmp_path), config.memory)
    assert isinstance(runtime.models, MemoryManager) and runtime.models.settings.mode == "novram"
    assert runtime.executor.models is runtime.models


def test_importing_and_building_the_manager_loads_no_torch():
    code = ("import sys, engine.memory.manager, engine.server, engine.cli\n"
            "from engine.memory.budget import MemorySettings\n"
            "m = engine.memory.manager.MemoryManager(settings=MemorySettings(mode='lowvram'))\n"
            "m.offload_all(); stats = m.stats()\n"
            "assert stats['models'] == [] and stats['mode'] == 'lowvram', stats\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ----- the server routes (a simulated device, so the test is about the routes)
@pytest_asyncio.fixture
async def served(aiohttp_client, tmp_path):
    from engine.server.app import create_app
    from tests.support.server import make_config, make_runtime

    backend = AccountingBackend(AccountingDevice(1000))
    runtime = make_runtime(tmp_path)
    runtime.models = runtime.executor.models = MemoryManager(backend=backend,
                                                             settings=MemorySettings(reserve_bytes=0))
    client = await aiohttp_client(create_app(runtime, make_config(tmp_path)))
    return client, runtime.models, backend


@pytest.mark.asyncio
async def test_system_stats_reports_the_loaded_models_and_free_unloads_them(served):
    client, manager, backend = served
    model = SimModel("transformer", 100, [200, 200])
    with manager.use(model):
        model(0)
    stats = await (await client.get("/system_stats")).json()
    assert stats["memory"]["mode"] == "normal"
    loaded = stats["memory"]["models"]
    assert [(m["name"], m["device_bytes"], m["total_bytes"]) for m in loaded] == [("transformer", 500, 500)]
    assert (await client.post("/free", json={"unload_models": True})).status == 200

    async def unloaded() -> bool:  # the worker frees between prompts
        memory = (await (await client.get("/system_stats")).json())["memory"]
        return memory["weights_on_device_bytes"] == 0

    await wait_until_async(unloaded, what="/free to unload the model")
    stats = await (await client.get("/system_stats")).json()
    assert stats["memory"]["models"][0]["device_bytes"] == 0 and backend.accounting.used == 0
