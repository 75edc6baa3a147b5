"""Tiny random TAESD-style preview decoders (`taef1`, `taef2`) for tests and the preview benchmark.

`write_tiny_decoders(models_dir)` writes `vae_approx/taef1_decoder.safetensors` (16 latent channels) and
`vae_approx/taef2_decoder.safetensors` (32) in TAESD's own key layout (`1.weight`, `3.conv.0.weight`, ...),
the layout of the published decoder files. The default shape is TAESD's (64 wide, 3-3-3-1 blocks, 8x
upsampling), so that timing a preview measures the real decoder's cost; `width`/`blocks` make smaller ones.
"""

from __future__ import annotations

from pathlib import Path

from engine.models.common.safetensors_io import save_safetensors

LATENT_CHANNELS = {"taef1": 16, "taef2": 32}


def tiny_decoder_state(latent_channels: int, width: int = 64, blocks: tuple[int, ...] = (3, 3, 3, 1),
                       seed: int = 0) -> dict:
    """A random decoder's weights, TAESD's keys (diffusers' `decoder.layers.i` is TAESD's `i + 1`)."""
    import torch  # noqa: PLC0415 - the zoo builds models with torch when asked to write them
    from diffusers import AutoencoderTiny  # noqa: PLC0415 - idem

    torch.manual_seed(seed)
    model = AutoencoderTiny(latent_channels=latent_channels, decoder_block_out_channels=(width,) * len(blocks),
                            num_decoder_blocks=blocks, encoder_block_out_channels=(width,) * len(blocks),
                            num_encoder_blocks=(1,) * len(blocks))
    state = {}
    for key, tensor in model.decoder.layers.state_dict().items():
        index, rest = key.split(".", 1)
        state[f"{int(index) + 1}.{rest}"] = tensor.detach().clone().contiguous()
    return state


def write_tiny_decoders(models_dir: str | Path, width: int = 64, blocks: tuple[int, ...] = (3, 3, 3, 1)) -> list[Path]:
    """Write taef1 and taef2 decoders into `models_dir/vae_approx/`; returns their paths."""
    folder = Path(models_dir) / "vae_approx"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for seed, (name, channels) in enumerate(LATENT_CHANNELS.items()):
        path = folder / f"{name}_decoder.safetensors"
        save_safetensors(tiny_decoder_state(channels, width, blocks, seed), path,
                         metadata={"fluxgraph_zoo": "random tiny preview decoder, not trained"})
        written.append(path)
    return written
