"""FLUX LoRA training on the tiny FLUX.1 dev model: dataset and cache, a run that learns a concept, exact resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.core.context import Interrupted
from engine.memory.manager import MemoryManager
from engine.training.flux_lora.cache import build_cache, encode_text
from engine.training.flux_lora.config import LoraConfigError, LoraTrainConfig
from engine.training.flux_lora.dataset import (DatasetError, bucket_sizes, choose_bucket, epoch_batches,
                                               load_pixels, scan_dataset)
from engine.training.flux_lora.samples import sample_latent
from engine.training.flux_lora.trainer import TrainEvents, train_lora
from engine.models.lora.loader import apply_lora
from engine.sampling.vae import encode
from tests.support.flux_lora import CONCEPT, write_shapes_dataset


@pytest.fixture(scope="module")
def tiny_dev():
    from engine.zoo.flux1_tiny import tiny_components

    return tiny_components("dev").handles()


def _config(tmp_path, data, **changes) -> LoraTrainConfig:
    base = dict(data_dir=str(data), output_dir=str(tmp_path / "loras"), output_name="shapes", rank=8, alpha=8.0,
                steps=80, learning_rate=1e-3, resolution=64, guidance=3.5, target_modules="attention")
    base.update(changes)
    return LoraTrainConfig(**base)


def test_dataset_captions_buckets_and_errors(tmp_path):
    data = write_shapes_dataset(tmp_path / "txt", count=3)
    samples = scan_dataset(data)
    assert [s.caption for s in samples] == [CONCEPT] * 3 and len({s.sha256 for s in samples}) == 3
    meta = write_shapes_dataset(tmp_path / "meta", count=2, caption="from jsonl", metadata=True)
    assert [s.caption for s in scan_dataset(meta)] == ["from jsonl"] * 2
    (data / "shape0.txt").unlink()
    with pytest.raises(DatasetError, match="shape0.png"):
        scan_dataset(data)
    buckets = bucket_sizes(512)
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert choose_bucket(1024, 1024, buckets) == (512, 512)
    wide = choose_bucket(1600, 900, buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 16 / 9) < 0.15
    (tmp_path / "wide").mkdir()
    Image.new("RGB", (120, 60), (0, 0, 255)).save(tmp_path / "wide" / "wide.png")
    (tmp_path / "wide" / "wide.txt").write_text("x")
    sample = scan_dataset(tmp_path / "wide")[0]
    assert load_pixels(sample, (64, 48), center_crop=True).shape == (48, 64, 3)
    assert load_pixels(sample, (64, 48), center_crop=False).shape == (48, 64, 3)
    # batches hold one bucket each and depend only on (seed, epoch)
    mixed = [(64, 64), (64, 48), (64, 64), (64, 48), (64, 64)]
    batches = epoch_batches(mixed, 2, seed=1, epoch=3)
    assert batches == epoch_batches(mixed, 2, seed=1, epoch=3) and sorted(sum(batches, [])) == list(range(5))
    assert all(len({mixed[i] for i in batch}) == 1 for batch in batches)
    with pytest.raises(LoraConfigError, match="rank"):
        LoraTrainConfig(data_dir="x", rank=0).check()
    with pytest.raises(LoraConfigError, match="timestep_sampling"):
        LoraTrainConfig(data_dir="x", timestep_sampling="cubic").check()


class _OffloadSpy(MemoryManager):
    def __init__(self) -> None:
        super().__init__(device="cpu")
        self.offloaded: list = []

    def offload(self, module) -> None:
        self.offloaded.append(module)
        super().offload(module)


def test_cache_is_reused_and_keyed_by_content(tmp_path, tiny_dev):
    model, clip, vae = tiny_dev
    memory = _OffloadSpy()
    data = write_shapes_dataset(tmp_path / "data", count=2)
    buckets = bucket_sizes(64)
    first, counts = build_cache(scan_dataset(data), buckets, True, model, clip, vae, memory, tmp_path / "cache")
    assert counts == {"latents_encoded": 2, "texts_encoded": 1, "reused": 0}
    # once encoded, the VAE and both text encoders leave the device: the transformer gets it to itself
    assert {id(m) for m in memory.offloaded} >= {id(vae.vae), id(clip.clip), id(clip.t5)}
    _, again = build_cache(scan_dataset(data), buckets, True, model, clip, vae, memory, tmp_path / "cache")
    assert again == {"latents_encoded": 0, "texts_encoded": 0, "reused": 2}
    Image.new("RGB", (64, 64), (0, 255, 0)).save(data / "shape1.png")  # new content: encoded again
    changed, after = build_cache(scan_dataset(data), buckets, True, model, clip, vae, memory, tmp_path / "cache")
    assert after["latents_encoded"] == 1 and changed[1].latent_file != first[1].latent_file
    latent = load_file(str(first[0].latent_file))["latent"]
    assert latent.shape == (16, 8, 8)


def test_training_lowers_the_loss_and_teaches_the_concept(tmp_path, tiny_dev):
    model, clip, vae = tiny_dev
    memory = MemoryManager(device="cpu")
    data = write_shapes_dataset(tmp_path / "data", count=4)
    base_weights = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    losses: list[float] = []
    result = train_lora(_config(tmp_path, data), model, clip, vae, memory,
                        TrainEvents(on_step=lambda report: losses.append(report.loss)))
    assert result.steps == 80 and result.lora_path.is_file()
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    # the transformer is back as it was: no adapters, same weights, nothing trainable left behind
    assert not getattr(model.transformer, "peft_config", None)
    after = model.transformer.state_dict()
    assert set(after) == set(base_weights) and all(torch.equal(after[k], v) for k, v in base_weights.items())

    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255)
                          for p in sorted(data.glob("*.png"))])
    target = encode(vae, pixels, memory).mean(0)  # the training images' mean raw latent
    trained = apply_lora(result.lora_path, model, None, 1.0, 0.0).model

    def distance(handle, caption: str) -> float:
        text = encode_text(clip, caption, memory)
        outputs = [sample_latent(handle, text, memory, width=64, height=64, steps=4, seed=s, guidance=3.5,
                                 patches_applied=False) for s in range(3)]
        return float((torch.stack(outputs).mean(0)[0] - target).abs().mean())

    moved = {caption: distance(model, caption) - distance(trained, caption)
             for caption in (CONCEPT, "a blue square", "a photo of a cat")}
    assert moved[CONCEPT] > 0.5
    assert moved[CONCEPT] > 1.3 * max(moved["a blue square"], moved["a photo of a cat"]), moved


def test_resume_after_interrupt_gives_the_same_lora_bit_for_bit(tmp_path, tiny_dev):
    model, clip, vae = tiny_dev
    memory = MemoryManager(device="cpu")
    data = write_shapes_dataset(tmp_path / "data", count=3)
    config = _config(tmp_path, data, steps=6, batch_size=2, grad_accumulation=2, timestep_sampling="sigmoid",
                     warmup_steps=2, target_modules="attention+mlp", cache_dir=str(tmp_path / "cache"))
    straight = train_lora(dataclasses.replace(config, output_name="straight"), model, clip, vae, memory)

    def interrupt_at_3(report):
        if report.step == 3:
            raise Interrupted()

    stopped = dataclasses.replace(config, output_name="stopped")
    with pytest.raises(Interrupted):
        train_lora(stopped, model, clip, vae, memory, TrainEvents(on_step=interrupt_at_3))
    assert not getattr(model.transformer, "peft_config", None)  # adapters removed on the way out too
    started, steps_run = [], []
    resumed = train_lora(dataclasses.replace(stopped, resume=True), model, clip, vae, memory,
                         TrainEvents(on_start=started.append, on_step=lambda r: steps_run.append(r.step)))
    assert started[0]["start_step"] == 3 and steps_run == [4, 5, 6]  # really continued, not restarted
    assert resumed.steps == 6 and resumed.losses == straight.losses
    ours, reference = load_file(str(resumed.lora_path)), load_file(str(straight.lora_path))
    assert set(ours) == set(reference) and all(torch.equal(ours[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="rank"):
        train_lora(dataclasses.replace(stopped, resume=True, rank=4), model, clip, vae, memory)
