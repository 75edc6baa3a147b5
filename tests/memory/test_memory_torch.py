"""The memory manager on real torch modules, on the CPU: memory-mapped loading, streaming through the window
(file pages on a CPU device, copied slots as on a GPU), LoRA patches swapped in by apply_patches, out-of-memory
recovery and errors."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.memory.manager import MemoryManager
from engine.models.flux1.transformer import load_flux_transformer
from engine.models.common.safetensors_io import save_safetensors
from engine.memory.budget import MemorySettings
from engine.memory.errors import ModelFileChangedError, OutOfMemoryError
from engine.memory.layout import BASE, split_module
from engine.memory.mapped import is_mapped, mapped_resident_bytes
from engine.memory.torch_backend import TorchBackend, requested_bytes

CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
              num_attention_heads=1, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
              axes_dims_rope=(4, 14, 14))
WIDTH = 32


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**CONFIG)
    for name, param in model.named_parameters():  # large enough weights that every block matters
        if name.endswith("weight") and param.ndim == 2:
            param.data.mul_(3.0)
    path = tmp_path_factory.mktemp("memory") / "flux-small.safetensors"
    save_safetensors(model.state_dict(), path)
    return path


def load(path):
    return load_flux_transformer(path, variant="dev").transformer


def inputs(seed: int = 1, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    values = dict(hidden_states=torch.randn(1, 16, 16, generator=g),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  pooled_projections=torch.randn(1, 16, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]))
    return dict({k: v.to(device) for k, v in values.items()}, return_dict=False)


@torch.no_grad()
def forward(module, seed: int = 1, device: str = "cpu"):
    return module(**inputs(seed, device))[0]


def manager(budget: int | None = None, streaming: str = "mapped", **kwargs) -> MemoryManager:
    settings = MemorySettings(budget_bytes=budget, reserve_bytes=0, device="cpu")
    backend = TorchBackend("cpu", cpu_streaming=streaming, **kwargs)
    return MemoryManager(settings=settings, backend=backend)


def same(a, b) -> bool:
    """Equal up to float rounding: slot views are aligned differently from the file, so kernels may take
    another vector path (a wrong or stale block would differ by far more)."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def model_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def half_budget(module) -> int:
    """The base, the streaming window and one more block: the other blocks stream."""
    parts = split_module(module)
    base = next(p for p in parts if p.name == BASE).nbytes
    blocks = [p.nbytes for p in parts if p.block]
    return base + 2 * max(blocks) + min(blocks)


def test_loading_maps_the_file_without_reading_or_copying_the_weights(model_file):
    module = load(model_file)
    assert all(is_mapped(p.data) for p in module.parameters())
    assert mapped_resident_bytes(model_file) < model_bytes(module) // 4  # nothing read beyond the header


def test_streamed_blocks_give_their_pages_back_and_compute_the_same(model_file):
    expected = forward(load(model_file))
    module = load(model_file)
    memory = manager(budget=half_budget(module))
    with memory.use(module):
        first, second = forward(module), forward(module)
    stats = memory.stats()["models"][0]
    assert 0 < stats["streamed_parts"] < stats["parts"]
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert mapped_resident_bytes(model_file) <= stats["resident_bytes"] + 16 * 4096 * stats["parts"]
    assert all(is_mapped(p.data) for p in module.parameters())  # still the file's views: never copied


def test_slot_streaming_as_on_a_gpu_copies_the_right_block_into_each_slot(model_file):
    expected = [forward(load(model_file), seed) for seed in (1, 2)]
    module = load(model_file)
    memory = manager(budget=half_budget(module), streaming="slots")
    with memory.use(module):
        outputs = [forward(module, seed) for seed in (1, 2)]
    assert all(same(a, b) for a, b in zip(outputs, expected))
    assert memory.stats()["models"][0]["streamed_parts"] >= 3
    assert all(is_mapped(p.data) for p in module.parameters())  # back at home after every block


class RecordingStreams:
    """Stands in for CUDA streams and events: records the order of the calls the transport makes."""

    def __init__(self, device) -> None:
        self.calls: list[tuple] = []
        outer = self

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_event(self, event):
                outer.calls.append((self.name, "waits", event.name))

        class Event:
            count = 0

            def __init__(self):
                Event.count += 1
                self.name = f"e{Event.count}"

            def record(self, stream):
                outer.calls.append((stream.name, "records", self.name))

        self._event, self.side, self._compute = Event, Stream("side"), Stream("compute")

    def event(self):
        return self._event()

    def current(self):
        return self._compute

    def on_side(self):
        return contextlib.nullcontext()

    def join(self):
        self.calls.append(("compute", "joins", "side"))


def test_side_stream_copies_wait_for_the_slot_to_be_free_and_compute_waits_for_the_copy(model_file):
    module = load(model_file)
    recorders: list[RecordingStreams] = []

    def factory(device):
        recorders.append(RecordingStreams(device))
        return recorders[-1]

    memory = manager(budget=half_budget(module), streaming="slots", streams_factory=factory)
    expected = forward(load(model_file))
    with memory.use(module):
        assert same(forward(module), expected) and same(forward(module), expected)
    transport = module._forward_pre_hooks  # the streamer is installed on the root
    assert transport and len(recorders) == 1
    calls = recorders[0].calls
    ready = {c[2] for c in calls if c[0] == "side" and c[1] == "records"}
    freed = {c[2] for c in calls if c[0] == "compute" and c[1] == "records"}
    for index, call in enumerate(calls):
        if call[:2] == ("compute", "waits"):  # compute waits only for copies recorded before it
            assert call[2] in ready and ("side", "records", call[2]) in calls[:index]
        if call[:2] == ("side", "waits"):  # a copy waits for the slot's previous block to finish
            assert call[2] in freed and ("compute", "records", call[2]) in calls[:index]
    assert sum(1 for c in calls if c[:2] == ("side", "waits")) >= 2
    memory.offload_all()  # slots are freed only after the side stream's last copy
    assert recorders[0].calls[-1] == ("compute", "joins", "side")


@pytest.mark.parametrize("streaming", ["mapped", "slots"])
def test_lora_patches_applied_outside_the_manager_survive_streaming(model_file, streaming):
    from engine.models.lora.patch import LoraPatch, WeightDelta, apply_patches

    g = torch.Generator().manual_seed(3)
    deltas = tuple(WeightDelta(name, torch.randn(WIDTH, 4, generator=g), torch.randn(4, WIDTH, generator=g), 0.5)
                   for name in ("transformer_blocks.1.attn.to_q", "single_transformer_blocks.2.attn.to_k"))
    lora = LoraPatch(name="test.safetensors", identity=("test",), part="transformer", deltas=deltas)
    reference = load(model_file)
    with apply_patches(reference, (lora,)):
        expected = forward(reference)
    module = load(model_file)
    memory = manager(budget=half_budget(module), streaming=streaming)
    for _ in range(2):
        with memory.use(module), apply_patches(module, (lora,)):
            assert same(forward(module), expected)
    assert (expected - forward(load(model_file))).abs().mean() > 0.01  # the patch matters
    memory.offload_all()  # restores the originals before moving weights
    with memory.use(module):
        assert same(forward(module), forward(load(model_file)))


def test_an_out_of_memory_call_is_retried_once_then_reported_clearly(model_file, monkeypatch):
    module = load(model_file)
    expected = forward(module)
    memory = manager()
    block = module.single_transformer_blocks[1]
    original = block.forward
    failures = {"left": 1}

    def failing(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...")
        return original(*args, **kwargs)

    monkeypatch.setattr(block, "forward", failing)
    with memory.use(module):
        assert torch.equal(forward(module), expected)
    assert any(e[0] == "retry" for e in memory.events)
    failures["left"] = 2
    with pytest.raises(OutOfMemoryError) as error, memory.use(module):
        forward(module)
    message = str(error.value)
    assert "out of cpu memory running FluxTransformer2DModel: tried to allocate 2.00 GiB" in message
    assert "--lowvram" in message and "retry failed" in message
    with memory.use(module):  # and the next run works
        assert torch.equal(forward(module), expected)


def test_out_of_memory_becomes_an_execution_error_and_the_executor_keeps_running(model_file):
    from engine.core.executor import Executor
    from engine.core.registry import NodeRegistry
    from engine.core.schema import Int, NodeResult, node

    module = load(model_file)
    memory = manager()
    fail = {"now": True}

    @node("TestRunModel", inputs=[Int("seed", 0)], outputs=[], output_node=True, category="test")
    def run_model(ctx, seed):
        with ctx.models.use(module) as running:
            if fail["now"]:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
            return NodeResult(ui={"text": [str(float(forward(running).sum()))]})

    executor = Executor(NodeRegistry([run_model]), models=memory)
    events: list = []
    result = executor.execute({"1": {"class_type": "TestRunModel", "inputs": {"seed": 1}}}, "p1",
                              on_event=lambda kind, data: events.append((kind, data)))
    error = [data for kind, data in events if kind == "execution_error"]
    assert result.status == "error" and error
    assert "tried to allocate 512.0 MiB" in error[0]["exception_message"]
    assert "--lowvram" in error[0]["exception_message"]
    fail["now"] = False
    assert executor.execute({"1": {"class_type": "TestRunModel", "inputs": {"seed": 2}}}, "p2").status == "success"


def test_a_model_file_modified_in_place_is_refused_before_its_pages_are_read(tmp_path, model_file):
    path = tmp_path / "copy.safetensors"
    path.write_bytes(model_file.read_bytes())
    module = load(path)
    with open(path, "r+b") as handle:  # in place: same inode, new contents
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(ModelFileChangedError, match="modified on disk after it was loaded"):
        with manager().use(module):
            pass


class Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, 64)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(6))

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def test_owned_weights_are_never_held_twice_when_streamed_through_slots():
    torch.manual_seed(0)
    module = Stack()
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = module(x)
    block, base = 64 * 65 * 4, 8 * 64 * 4 + 64 * 4
    memory = manager(budget=base + 2 * block + 2 * block, streaming="slots")
    with torch.no_grad(), memory.use(module):
        assert torch.equal(module(x), expected)
    assert memory.stats()["models"][0]["streamed_parts"] == 4
    state = memory.backend._state(module)
    for part in state.parts:
        for slot in part.params:  # one owned tensor per weight, and the parameter points at it
            assert slot.source is None and slot.home is not None and slot.holds_own()


def test_requested_bytes_reads_cuda_and_cpu_messages():
    assert requested_bytes(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0)")) == 20 << 20
    assert requested_bytes(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                        "1048576 bytes. Error code 12")) == 1 << 20
    assert requested_bytes(RuntimeError("something else")) is None


def test_dropping_the_model_frees_its_registry_entry(model_file):
    memory = manager()
    module = load(model_file)
    with memory.use(module):
        forward(module)
    assert len(memory.stats()["models"]) == 1
    del module
    gc.collect()
    assert memory.stats()["models"] == []


@pytest.mark.gpu
def test_cuda_streaming_from_pinned_memory_matches_full_residency_within_the_budget(model_file):
    full = load(model_file)
    with MemoryManager(settings=MemorySettings(device="cuda")).use(full):
        expected = forward(full, device="cuda")
    module = load(model_file)
    budget = half_budget(module)
    memory = MemoryManager(settings=MemorySettings(device="cuda", budget_bytes=budget, reserve_bytes=0))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with memory.use(module):
        torch.cuda.reset_peak_memory_stats()
        outputs = [forward(module, device="cuda") for _ in range(3)]
        torch.cuda.synchronize()
        weights_peak = torch.cuda.max_memory_allocated() - before
    assert all(torch.allclose(out, expected, rtol=1e-4, atol=1e-4) for out in outputs)
    placed = memory.stats()["models"][0]
    assert placed["streamed_parts"] > 0 and placed["device_bytes"] <= budget
    assert weights_peak < budget + 64 * (1 << 20)  # weights and window within the budget, plus activations
    state = memory.backend._state(module)
    streamed = [p for p in state.parts if p.name in state.streamed]
    assert all(slot.home is not None and slot.home.is_pinned() for p in streamed for slot in p.params)
    memory.offload_all()
    assert all(p.device.type == "cpu" and is_mapped(p.data) for p in module.parameters())  # back to the file


@pytest.mark.gpu
def test_cuda_owned_weights_move_without_a_second_copy():
    module = Stack()
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = module(x)
    memory = MemoryManager(settings=MemorySettings(device="cuda"))
    with torch.no_grad(), memory.use(module):
        assert torch.allclose(module(x.cuda()).cpu(), expected, atol=1e-5)
        state = memory.backend._state(module)
        assert all(slot.home is None and slot.param.is_cuda for p in state.parts for slot in p.params)
    memory.offload_all()
    assert all(slot.home is not None and slot.holds_own() and not slot.param.is_cuda
               for p in state.parts for slot in p.params)


LOAD_PEAK_SCRIPT = """
import sys, torch
from engine.models.common.build import instantiate
from engine.models.common.safetensors_io import open_safetensors

def peak():
    with open('/proc/self/status') as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith('VmHWM'))

def rss():
    with open('/proc/self/status') as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith('VmRSS'))

path = sys.argv[1]
factory = lambda: torch.nn.ModuleList(torch.nn.Linear(1024, 1024, bias=False) for _ in range(48))
open('/proc/self/clear_refs', 'w').write('5')
start = rss()
module = instantiate(factory, open_safetensors(path).load(), path, dtype=torch.bfloat16)
print(peak() - start, rss() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loading_with_a_dtype_cast_never_holds_two_copies(tmp_path):
    weights = {f"{i}.weight": torch.full((1024, 1024), i / 48) for i in range(48)}  # 192 MiB of float32
    path = tmp_path / "wide.safetensors"
    save_safetensors(weights, path)
    del weights
    done = subprocess.run([sys.executable, "-c", LOAD_PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    peak, kept = (int(v) for v in done.stdout.split())
    converted, largest = 48 * 1024 * 1024 * 2, 1024 * 1024 * 4  # 96 MiB of bfloat16, one 4 MiB source tensor
    assert kept < converted + 16 * largest  # the converted model only: the file's pages were handed back
    assert peak < converted + 16 * largest  # holding the float32 source too: about 290 MiB (measured)
