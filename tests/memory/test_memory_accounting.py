"""The memory manager's decisions on a simulated device that counts bytes (engine.memory.accounting): which
parts are resident, what is evicted and in which order, the prefetch order, out-of-memory recovery, and that
no part is ever held twice nor the device ever over capacity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.memory.manager import MemoryManager
from engine.memory.accounting import AccountingBackend, AccountingDevice, SimModel
from engine.memory.budget import MemorySettings
from engine.memory.errors import NotEnoughMemoryError, OutOfMemoryError


def setup(capacity: int, mode: str = "normal", budget: int | None = None, cpu_device: bool = False,
          reserve: int = 0) -> tuple[MemoryManager, AccountingBackend]:
    backend = AccountingBackend(AccountingDevice(capacity), cpu_device=cpu_device)
    manager = MemoryManager(backend=backend, settings=MemorySettings(mode=mode, budget_bytes=budget,
                                                                     reserve_bytes=reserve))
    return manager, backend


def run(manager: MemoryManager, model: SimModel, activations: int = 0, calls: int = 1) -> None:
    with manager.use(model) as running:
        for _ in range(calls):
            running(activations)


def on_device(backend: AccountingBackend, model: SimModel) -> set[str]:
    return {p.name for p in model.parts if backend.where(model, p.name) == "device"}


def evictions(backend: AccountingBackend) -> list[str]:
    """Models in the order their base left the device."""
    return [name for kind, name, *rest in backend.log if kind == "unload" and rest == ["(base)"]]


def test_models_stay_resident_until_room_is_needed_then_leave_least_recently_used_first():
    manager, backend = setup(1000)
    a, b, c = SimModel("a", 50, [150, 150]), SimModel("b", 50, [150, 150]), SimModel("c", 50, [150, 150])
    run(manager, a)
    run(manager, b)
    assert on_device(backend, a) == {"(base)", "block0", "block1"} and on_device(backend, b) == on_device(backend, a)
    run(manager, a)  # a is now the most recently used
    run(manager, c)  # needs 350 of the 300 left: b goes, not a
    assert evictions(backend) == ["b"]
    assert on_device(backend, b) == set() and len(on_device(backend, a)) == 3 and len(on_device(backend, c)) == 3
    run(manager, b)
    assert evictions(backend) == ["b", "a"]
    unloads = [i for i, e in enumerate(backend.log) if e[0] == "unload" and e[1] == "a"]
    loads = [i for i, e in enumerate(backend.log) if e[0] == "load" and e[1] == "b"]
    assert max(unloads) < min(loads[3:])  # room is made before b comes back, never after


def test_a_model_larger_than_the_device_runs_with_blocks_streamed_one_ahead():
    manager, backend = setup(1000)
    big = SimModel("big", 100, [100] * 12)
    run(manager, big, activations=50, calls=3)
    resident = on_device(backend, big)
    assert "(base)" in resident and 1 < len(resident) < 13
    stats = manager.stats()["models"][0]
    assert stats["resident_parts"] == len(resident) and stats["streamed_parts"] == 13 - len(resident)
    assert backend.accounting.peak <= 1000
    fetches = [e for e in backend.log if e[0] == "fetch"]
    assert all(prefetch for *_, prefetch in fetches)  # every block arrived before it was needed
    runs = [e[2] for e in backend.log if e[0] == "run"]
    assert runs == [f"block{i}" for i in range(12)] * 3
    log = [(e[0], e[2]) for e in backend.log if e[0] in ("fetch", "run") and e[2] not in resident]
    streamed_order = [b for k, b in log if k == "run"][:stats["streamed_parts"]]
    for current, following in zip(streamed_order, streamed_order[1:]):  # next fetched before this one runs
        assert log.index(("fetch", following)) < log.index(("run", current))


def test_no_vram_streams_everything_and_low_vram_offloads_after_each_use():
    manager, backend = setup(10_000, mode="novram")
    model = SimModel("m", 100, [100] * 4)
    run(manager, model)
    assert on_device(backend, model) == set()  # offloaded after use (keep_loaded is off in novram)
    assert [e for e in backend.log if e[0] == "stream"] == [("stream", "m", ("block0", "block1", "block2", "block3"))]
    manager, backend = setup(10_000, mode="lowvram")
    first, second = SimModel("x", 10, [100]), SimModel("y", 10, [100])
    run(manager, first)
    assert on_device(backend, first) == set()
    run(manager, second)
    assert evictions(backend) == ["x", "y"]


def test_high_vram_loads_whole_and_streams_only_after_running_out():
    manager, backend = setup(1000, mode="highvram")
    fits, too_big = SimModel("fits", 100, [300, 300]), SimModel("too-big", 100, [300] * 4)
    run(manager, fits)
    assert manager.stats()["models"][0]["streamed_parts"] == 0
    run(manager, too_big, calls=2)  # loading whole fails on the device; the retry streams
    assert ("retry", "too-big", "load") in manager.events
    assert manager.stats()["models"][0]["streamed_parts"] > 0 and backend.accounting.peak <= 1000


def test_a_set_budget_caps_the_device_use_below_its_capacity():
    manager, backend = setup(10_000, budget=600)
    model = SimModel("m", 100, [100] * 8)
    run(manager, model, calls=2)
    assert manager.stats()["models"][0]["device_bytes"] <= 600
    assert backend.accounting.peak <= 600


def test_too_small_a_budget_is_a_clear_error_naming_bytes_and_flags():
    manager, _ = setup(10_000, budget=250)
    with pytest.raises(NotEnoughMemoryError) as error:
        run(manager, SimModel("huge-base", 200, [100, 100]))
    message = str(error.value)
    assert "huge-base needs at least 400 bytes" in message  # base 200 + a window of two 100-byte blocks
    assert "budget for weights is 250 bytes" in message and "--vram-budget" in message and "--lowvram" in message


def test_running_out_of_memory_streams_more_blocks_and_retries_once():
    manager, backend = setup(1000)
    model = SimModel("m", 100, [100] * 6)
    run(manager, model)
    assert on_device(backend, model) == {p.name for p in model.parts}  # 700 fitted whole
    backend.accounting.allocate(("another process",), 100)  # now 200 free, activations need 250
    run(manager, model, activations=250)
    assert ("retry", "m", 250) in manager.events
    assert 0 < manager.stats()["models"][0]["streamed_parts"]
    assert model.calls == 2 and backend.accounting.peak <= 1000


def test_out_of_memory_after_the_retry_is_a_clear_error_and_the_manager_keeps_working():
    manager, backend = setup(1000)
    model = SimModel("m", 100, [100] * 4)
    with pytest.raises(OutOfMemoryError) as error:
        run(manager, model, activations=5000)
    message = str(error.value)
    assert "out of accounting memory running m: tried to allocate 4.88 KiB" in message
    assert "retry failed" in message and "--lowvram" in message
    assert manager.stats()["models"][0]["in_use"] is False
    run(manager, model, activations=10)  # the process (and the manager) carry on
    assert model.calls == 1


def test_cpu_owned_weights_cannot_leave_and_file_backed_ones_stream_from_disk():
    manager, backend = setup(1000, cpu_device=True)
    owned = SimModel("owned", 50, [200, 200], file_backed=False)
    mapped = SimModel("mapped", 50, [200] * 4)
    run(manager, owned)
    run(manager, mapped, calls=2)
    assert on_device(backend, owned) == {"(base)", "block0", "block1"}  # RAM it cannot give back
    assert {backend.where(mapped, p.name) for p in mapped.parts} == {"device", "disk"}
    assert backend.accounting.peak <= 1000


def test_free_takes_every_model_off_the_device_except_one_in_use():
    manager, backend = setup(1000)
    a, b = SimModel("a", 10, [100]), SimModel("b", 10, [100])
    run(manager, a)
    with manager.use(b):
        manager.offload_all()
        assert on_device(backend, a) == set() and on_device(backend, b) == {"(base)", "block0"}
    manager.offload_all()
    assert on_device(backend, b) == set() and backend.accounting.used == 0
    assert manager.stats()["weights_on_device_bytes"] == 0


def test_dropped_models_leave_the_registry():
    manager, _ = setup(1000)
    model = SimModel("gone", 10, [100])
    run(manager, model)
    assert [m["name"] for m in manager.stats()["models"]] == ["gone"]
    del model
    import gc

    gc.collect()
    assert manager.stats()["models"] == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 300)), min_size=1, max_size=25),
       st.lists(st.lists(st.integers(10, 300), min_size=1, max_size=6), min_size=5, max_size=5),
       st.booleans())
def test_no_part_is_ever_held_twice_and_the_device_never_overflows(uses, shapes, cpu):
    manager, backend = setup(2000, cpu_device=cpu)
    # on a CPU device one model is owned memory (it cannot leave RAM; two might not fit together at all)
    models = [SimModel(f"m{i}", 20, blocks, file_backed=(i != 1 or not cpu)) for i, blocks in enumerate(shapes)]
    if cpu:
        uses = [(1, 0)] + uses  # owned memory is there before the file-backed models come and go
    for index, activations in uses:
        try:
            run(manager, models[index], activations=activations)
        except (NotEnoughMemoryError, OutOfMemoryError):
            pass  # allowed outcomes; what matters is the state left behind
        placed = {}
        for model in models:
            if model.backend is None:
                continue
            for part in model.parts:
                placed[(model.name, part.name)] = backend.where(model, part.name)  # raises if held twice
        assert backend.accounting.used <= backend.accounting.capacity
        ledger = sum(m["device_bytes"] for m in manager.stats()["models"])
        assert ledger == backend.accounting.used  # the manager's books match the device exactly
    assert backend.accounting.peak <= backend.accounting.capacity
