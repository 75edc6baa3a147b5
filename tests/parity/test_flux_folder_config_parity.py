"""A diffusers FLUX.1 folder whose config.json files hold sizes no shape convention predicts (heads 16 wide with
rope axes (4, 6, 6), CLIP heads 8 wide, VAE GroupNorm of 4 groups, its own VAE factors) and whose tokenizer
folders declare their own classes (a cased BPE as PreTrainedTokenizerFast, T5TokenizerFast) loads through
CheckpointLoaderSimple and gives FluxPipeline's image from the same folder (engine/zoo/flux1_odd.py).

Settings as tests/parity/test_flux_parity.py: euler + simple, FluxPipeline's generators and
max_sequence_length=256, float32, tolerance 1e-4. The prompt has capitals, so a tokenizer that lowercases
(a forced CLIPTokenizer) gives other ids and another image.
"""

from __future__ import annotations

import pytest
import torch

from engine.backends.runtime import Runtime
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from engine.zoo.flux1_odd import write_odd_flux1_folder
from tests.support.flux import capture_image, run_prompt

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TOLERANCE = 1e-4
SENSITIVITY = 0.01
NAME = "flux1-odd-dev"
PROMPT = "A Photo of a Cat sitting on a RED sofa"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("odd-folder")
    write_odd_flux1_folder(base / "models" / "checkpoints" / NAME)
    return base


@pytest.fixture(scope="module")
def runtime(base):
    registry = NodeRegistry().discover("nodes")
    registry.register(capture_image)
    return Runtime.create(base, registry=registry, models=MemoryManager(device="cpu"))


@pytest.fixture(scope="module")
def pipeline(base):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(base / "models" / "checkpoints" / NAME), local_files_only=True,
                                        torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def graph(prompt: str, *, seed: int, steps: int, width: int = 64, height: int = 48) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["4", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "20": {"class_type": "CaptureImage", "inputs": {"images": ["8", 0], "key": "out"}},
    }


def test_an_odd_sized_folder_matches_flux_pipeline(runtime, pipeline):
    ours, _ = run_prompt(runtime, graph(PROMPT, seed=7, steps=4))
    expected = pipeline(prompt=PROMPT, width=64, height=48, num_inference_steps=4, guidance_scale=3.5,
                        generator=[torch.Generator("cpu").manual_seed(7)], output_type="pt",
                        max_sequence_length=256).images.permute(0, 2, 3, 1)
    assert ours.shape == expected.shape == (1, 48, 64, 3)
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_the_odd_folder_reacts_to_its_prompt_and_its_case(runtime):
    """Parity is meaningful: the image moves with the prompt, and with the capitals the cased tokenizer keeps."""
    base, _ = run_prompt(runtime, graph(PROMPT, seed=7, steps=3))
    lower, _ = run_prompt(runtime, graph(PROMPT.lower(), seed=7, steps=3))
    other, _ = run_prompt(runtime, graph("a bowl of fruit on a wooden table", seed=7, steps=3))
    assert float((base - lower).abs().mean()) >= SENSITIVITY / 10
    assert float((base - other).abs().mean()) >= SENSITIVITY
