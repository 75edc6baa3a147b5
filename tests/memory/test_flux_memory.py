"""The minimal memory manager: device choice, `use` moving modules, OOM fallback, CPU default."""

from __future__ import annotations

import pytest
import torch

from engine.memory.manager import MemoryManager, default_device, manager_from


class FakeModule:
    """Records `.to` calls; its one parameter reports the device it was last moved to."""

    def __init__(self, device: str = "cpu", fail_first_moves: int = 0) -> None:
        self.device = torch.device(device)
        self.moves: list[str] = []
        self.fail_first_moves = fail_first_moves

    def parameters(self):
        return iter([type("Param", (), {"device": self.device})()])

    def buffers(self):
        return iter([])

    def to(self, device):
        device = torch.device(device)
        if self.fail_first_moves and device.type == "cuda":
            self.fail_first_moves -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.moves.append(device.type)
        self.device = device
        return self


def test_default_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    assert MemoryManager().device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")


def test_use_moves_to_the_execution_device_and_keeps_it_loaded():
    manager = MemoryManager(device="cuda")
    module = FakeModule()
    with manager.use(module) as used:
        assert used is module and module.device.type == "cuda"
    assert module.device.type == "cuda"  # resident for the next prompt
    with manager.use(module):
        pass
    assert module.moves == ["cuda"]  # no second copy


def test_use_can_offload_after_each_use():
    manager = MemoryManager(device="cuda", keep_loaded=False)
    module = FakeModule()
    with manager.use(module):
        assert module.device.type == "cuda"
    assert module.device.type == "cpu" and module.moves == ["cuda", "cpu"]


def test_out_of_memory_offloads_the_other_models_and_retries():
    manager = MemoryManager(device="cuda")
    resident = FakeModule()
    manager.load(resident)
    big = FakeModule(fail_first_moves=1)
    with manager.use(big):
        assert big.device.type == "cuda"
    assert resident.device.type == "cpu"


def test_other_errors_are_not_swallowed():
    class Broken(FakeModule):
        def to(self, device):
            raise RuntimeError("weights are corrupt")

    with pytest.raises(RuntimeError, match="corrupt"):
        MemoryManager(device="cuda").load(Broken())


def test_nodes_without_a_runtime_manager_run_on_the_cpu():
    assert manager_from(None).device == torch.device("cpu")
    given = MemoryManager(device="cpu")
    assert manager_from(given) is given
    assert given.peak_memory_bytes() is None
    with given.use(None) as nothing:
        assert nothing is None


@pytest.mark.gpu
def test_real_module_moves_to_cuda_and_back():
    manager = MemoryManager(device="cuda", keep_loaded=False)
    layer = torch.nn.Linear(4, 4)
    with manager.use(layer):
        assert layer.weight.device.type == "cuda"
        assert manager.peak_memory_bytes() > 0
    assert layer.weight.device.type == "cpu"
