"""Shared helpers for the FLUX tests: a tiny zoo on disk, a runtime over it, graph builders, image capture.

The zoo is written once per test process (into a temporary folder removed at exit). Graphs are API-format
prompts built the way a ComfyUI user wires them. `CaptureImage` is a test-only output node that keeps the
float IMAGE tensor (PNG files would round it to 8 bits, too coarse for a 1e-4 parity check).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from engine.backends.runtime import Runtime
from engine.core.registry import NodeRegistry
from engine.core.schema import Socket, String, node
from engine.core.types import IMAGE
from engine.memory.manager import MemoryManager
from engine.zoo.writer import write_tiny_zoo

CAPTURED: dict[str, Any] = {}
PROMPT = "a photo of a cat sitting on a red sofa"


@node("CaptureImage", category="testing", inputs=[Socket("images", IMAGE), String("key")], outputs=[],
      output_node=True, is_changed=lambda **_: float("nan"))
def capture_image(ctx: Any, images: Any, key: str):
    CAPTURED[key] = images.clone()
    return ()


@functools.lru_cache(maxsize=None)
def zoo_base() -> Path:
    """A base folder whose models/ holds the tiny zoo (written once per process)."""
    base = Path(tempfile.mkdtemp(prefix="fluxgraph-flux-tests-"))
    atexit.register(shutil.rmtree, base, True)
    write_tiny_zoo(base / "models")
    return base


def make_runtime() -> Any:
    """A fresh runtime (own cache) over the zoo, with the capture node registered, on the CPU."""
    registry = NodeRegistry().discover("nodes")
    registry.register(capture_image)
    return Runtime.create(zoo_base(), registry=registry, models=MemoryManager(device="cpu"))


def txt2img_prompt(variant: str = "dev", *, width: int = 64, height: int = 64, batch: int = 1, seed: int = 42,
                   steps: int = 4, prompt: str = PROMPT, guidance: float | None = 3.5, cfg: float = 1.0,
                   negative: str | None = None, sampler: str = "euler", scheduler: str = "simple",
                   key: str = "out") -> dict:
    """UNETLoader + DualCLIPLoader + VAELoader + CLIPTextEncode [+ FluxGuidance] + EmptySD3LatentImage +
    KSampler + VAEDecode + CaptureImage."""
    positive: list = ["6", 0]
    graph: dict[str, Any] = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"flux1-{variant}-tiny.safetensors",
                                                      "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl-tiny.safetensors",
                                                          "clip_name2": "clip_l-tiny.safetensors", "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae-tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height,
                                                               "batch_size": batch}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "20": {"class_type": "CaptureImage", "inputs": {"images": ["8", 0], "key": key}},
    }
    if guidance is not None:
        graph["4"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": guidance}}
        positive = ["4", 0]
    negative_link: list = ["7", 0]
    if negative is not None:
        graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["2", 0]}}
        negative_link = ["10", 0]
    graph["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": positive, "negative": negative_link, "latent_image": ["5", 0],
        "denoise": 1.0}}
    return graph


def run_prompt(runtime: Any, prompt: dict, key: str = "out") -> tuple[Any, Any]:
    """Validate and execute; returns (captured image, ExecutionResult)."""
    checked = runtime.validate(prompt)
    assert checked.ok, (checked.error, checked.node_errors)
    CAPTURED.pop(key, None)
    result = runtime.executor.execute(checked.prompt, prompt_id=key)
    assert result.status == "success", result.errors
    return CAPTURED.pop(key), result


