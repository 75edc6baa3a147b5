"""FLUX LoRA training settings: one dataclass shared by the TrainFluxLora node, `fluxgraph train lora --config
FILE` and the checkpoint (stdlib only; YAML files need pyyaml, loaded lazily).

`LoraTrainConfig.check()` refuses impossible values with the setting's name and what is accepted, before any
model or image is loaded. The settings that decide the result are saved in each checkpoint so that a resumed
run continues exactly the run it came from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# LoRA target modules of the diffusers FLUX transformers, by preset: suffixes of the names of the nn.Linear
# modules inside the double and single blocks ("attn.to_q" matches every block's attention). FLUX.2 fuses the
# single blocks' q/k/v/mlp projection into `to_qkv_mlp_proj`, so its presets name that module instead.
# "all-linear": every linear layer of the blocks (modulation included).
TARGET_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "attention": {
        "flux1": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out"),
        "flux2": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj", "attn.to_out"),
    },
    # diffusers' train_dreambooth_lora_flux.py default list, plus the single blocks' MLP
    "attention+mlp": {
        "flux1": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                  "ff_context.net.2", "proj_mlp", "proj_out"),
        "flux2": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj", "attn.to_out", "ff.linear_in",
                  "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out"),
    },
    "all-linear": {"flux1": ("",), "flux2": ("",)},
}
TIMESTEP_SAMPLINGS = ("uniform", "sigmoid", "shift")  # sigmoid = logit-normal; shift = FLUX's resolution shift
WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")  # diffusers' compute_loss_weighting_for_sd3
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on a GPU, fp32 on the CPU
OPTIMIZERS = ("auto", "adamw", "adamw8bit")  # auto: 8-bit AdamW on a GPU where bitsandbytes is importable
IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Settings a resumed run may change without leaving the original run's trajectory.
RESUME_FREE_FIELDS = frozenset({"data_dir", "output_dir", "state_dir", "cache_dir", "resume", "save_every",
                                "sample_every", "sample_prompt", "sample_steps", "sample_size", "device",
                                "max_steps", "unet", "clip", "vae", "models_dir", "base_dir", "weight_dtype"})


class LoraConfigError(ValueError):
    """A training setting out of range, with its name and what is accepted."""


@dataclass
class LoraTrainConfig:
    data_dir: str  # images + same-named .txt captions, or metadata.jsonl ({"file_name", "text"})
    output_name: str = "flux-lora"  # <output_dir>/<output_name>.safetensors (+ -stepN files)
    output_dir: str = ""  # where LoRA files go (models/loras)
    state_dir: str = ""  # where training_state.pt and samples go (default models/training/flux_lora/<name>)
    cache_dir: str = ""  # latents and text embeddings (default <state_dir>/cache)
    rank: int = 16
    alpha: float = 16.0
    target_modules: str = "attention"  # a TARGET_PRESETS key, or comma-separated module-name suffixes
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 1
    grad_accumulation: int = 1
    seed: int = 0
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: str = "none"
    guidance: float = 1.0  # FLUX.1 dev / FLUX.2 dev embedded guidance while training (diffusers' default 3.5)
    resolution: int = 512  # buckets hold about resolution^2 pixels
    center_crop: bool = True  # cover the bucket and crop the centre; False: resize to the bucket
    gradient_checkpointing: bool = False
    precision: str = "auto"
    optimizer: str = "auto"
    max_grad_norm: float = 1.0  # 0: off
    save_every: int = 0  # also save <name>-step<N>.safetensors and the resume state every N steps
    sample_every: int = 0  # sample an image every N steps (0: only at the end when sample_prompt is set)
    sample_prompt: str = ""
    sample_steps: int = 20
    sample_size: int = 0  # square sample images (0: resolution)
    max_steps: int = 0  # stop after this many steps (the schedule still spans `steps`); 0: run all
    device: str = ""
    resume: bool = False
    # Only for `fluxgraph train lora`: the models to load (names under models/ or paths).
    unet: str = ""
    clip: list[str] = field(default_factory=list)
    vae: str = ""
    weight_dtype: str = "default"
    base_dir: str = ""
    models_dir: str = ""

    def check(self) -> "LoraTrainConfig":
        positive = {"rank": self.rank, "steps": self.steps, "batch_size": self.batch_size,
                    "grad_accumulation": self.grad_accumulation, "sample_steps": self.sample_steps}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LoraConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("warmup_steps", "save_every", "sample_every", "max_steps", "sample_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LoraConfigError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.resolution < 64 or self.resolution % 16:
            raise LoraConfigError(f"resolution must be a multiple of 16 and >= 64, got {self.resolution}")
        if self.sample_size and self.sample_size % 16:
            raise LoraConfigError(f"sample_size must be a multiple of 16, got {self.sample_size}")
        if not 0 < self.learning_rate < 1:
            raise LoraConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.weight_decay < 1 or self.max_grad_norm < 0:
            raise LoraConfigError("weight_decay must be in [0, 1) and max_grad_norm >= 0")
        if self.alpha <= 0:
            raise LoraConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.logit_std <= 0:
            raise LoraConfigError(f"logit_std must be > 0, got {self.logit_std}")
        for name, value, accepted in (("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS),
                                      ("weighting", self.weighting, WEIGHTINGS),
                                      ("precision", self.precision, PRECISIONS),
                                      ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in accepted:
                raise LoraConfigError(f"{name} must be one of {', '.join(accepted)}, got {value!r}")
        if not self.target_modules.strip():
            raise LoraConfigError(f"target_modules is empty: name a preset ({', '.join(TARGET_PRESETS)}) or "
                                  "comma-separated module names")
        name = self.output_name.strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise LoraConfigError(f"output_name must be a plain file name (no folders), got {self.output_name!r}")
        if not self.data_dir:
            raise LoraConfigError("data_dir is required: a folder of images with .txt captions or metadata.jsonl")
        return self

    def target_names(self, family: str) -> tuple[str, ...]:
        """The peft target modules of this run's preset (or the comma-separated list given) for a family."""
        preset = TARGET_PRESETS.get(self.target_modules)
        if preset is not None:
            return preset[family]
        return tuple(part.strip() for part in self.target_modules.split(",") if part.strip())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraTrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoraConfigError(f"unknown training setting(s): {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known))})")
        if "clip" in data and isinstance(data["clip"], str):
            data = {**data, "clip": [data["clip"]]}
        try:
            return cls(**data)
        except TypeError as exc:
            raise LoraConfigError(f"training settings: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "LoraTrainConfig":
        """A JSON or YAML file of settings (the keys of this dataclass)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LoraConfigError(f"cannot read the training config {path}: {exc.strerror}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise LoraConfigError(f"{path} is not valid YAML: {exc}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LoraConfigError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LoraConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data)

    def differences(self, other: "LoraTrainConfig") -> list[str]:
        """Settings that change the training trajectory and differ between the two configs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {theirs[key]!r} in the checkpoint, {mine[key]!r} now" for key in mine
                if key not in RESUME_FREE_FIELDS and mine[key] != theirs.get(key)]
