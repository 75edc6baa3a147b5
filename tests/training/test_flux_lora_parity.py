"""Parity of the FLUX LoRA training step with diffusers' training scripts on the tiny models.

The reference step is written here the way diffusers' examples/dreambooth/train_dreambooth_lora_flux.py and
train_dreambooth_lora_flux2_klein.py compute it, with diffusers' own pieces: the scheduler's timestep and sigma
tables (and the scripts' get_sigmas lookup), compute_density_for_timestep_sampling,
compute_loss_weighting_for_sd3, FluxPipeline / Flux2KleinPipeline packing and ids, the guidance vector and
`target = noise - model_input`. For the same batch, noise, timesteps and LoRA weights, our loss and every LoRA
gradient must match within 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.training.flux_lora.adapters import add_lora, target_modules
from engine.training.flux_lora.config import TARGET_PRESETS
from engine.training.flux_lora.forward import TextBatch, step_loss
from engine.training.flux_lora.loss import sample_u, timesteps_for

TOLERANCE = 1e-5
RANK, ALPHA = 4, 8.0


def _lora_weights(transformer, seed: int) -> dict[str, torch.Tensor]:
    """Random non-zero A and B for every adapter (B = 0 would leave A's gradient zero), keyed by module."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict) and module.lora_A:
            adapter = next(iter(module.lora_A))
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            weights[name] = (0.2 * torch.randn(a.shape, generator=gen), 0.2 * torch.randn(b.shape, generator=gen))
    return weights


def _set_lora(transformer, weights) -> None:
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name in weights:
                adapter = next(iter(module.lora_A))
                module.lora_A[adapter].weight.copy_(weights[name][0])
                module.lora_B[adapter].weight.copy_(weights[name][1])


def _lora_grads(transformer) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in transformer.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            stem = name.replace(".fluxgraph_train.", ".").replace(".default.", ".")
            grads[stem] = param.grad.detach().clone()
    return grads


def _reference_transformer(transformer, names):
    from peft import LoraConfig

    reference = copy.deepcopy(transformer)
    reference.requires_grad_(False)
    reference.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=names))
    return reference


def _reference_sigmas(scheduler, timesteps):
    """train_dreambooth_lora_flux*.py's get_sigmas."""
    sigmas = scheduler.sigmas.to(dtype=torch.float32)
    schedule_timesteps = scheduler.timesteps
    step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < 4:
        sigma = sigma.unsqueeze(-1)
    return sigma


def _compare(ours_loss, ours, ref_loss, reference):
    ours_value, ref_value = float(ours_loss.detach()), float(ref_loss.detach())
    assert abs(ours_value - ref_value) <= TOLERANCE * max(1.0, abs(ref_value))
    ours_grads, ref_grads = _lora_grads(ours), _lora_grads(reference)
    assert set(ours_grads) == set(ref_grads) and ours_grads
    moved = 0.0
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=TOLERANCE, rtol=TOLERANCE, msg=name)
        moved = max(moved, float(grad.abs().max()))
    assert moved > 1e-4  # the gradients are real, not all zero


@pytest.mark.parametrize("weighting,sampling", [("none", "uniform"), ("sigma_sqrt", "sigmoid"),
                                                ("cosmap", "uniform")])
def test_flux1_dev_step_matches_diffusers(weighting, sampling):
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from engine.zoo.flux1_tiny import tiny_components

    comps = tiny_components("dev")
    scheduler = comps.scheduler()
    names = target_modules(comps.transformer, TARGET_PRESETS["attention+mlp"]["flux1"])
    reference = _reference_transformer(comps.transformer, names)
    ours = comps.transformer
    add_lora(ours, names, RANK, ALPHA, seed=0)
    weights = _lora_weights(ours, seed=5)
    _set_lora(ours, weights)
    _set_lora(reference, weights)

    gen = torch.Generator().manual_seed(11)
    batch, channels, height, width = 2, 16, 8, 6
    latents = torch.randn(batch, channels, height, width, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    embeds = torch.randn(batch, 7, comps.transformer.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(batch, comps.transformer.config.pooled_projection_dim, generator=gen)
    guidance_scale = 3.5

    # our draws equal diffusers' density with the same generator state
    scheme = {"uniform": "none", "sigmoid": "logit_normal"}[sampling]
    u_ref = compute_density_for_timestep_sampling(scheme, batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  generator=torch.Generator().manual_seed(3))
    u = sample_u(sampling, batch, torch.Generator().manual_seed(3))
    assert torch.equal(u, u_ref)

    # reference step, as the diffusers script
    indices = (u_ref * scheduler.config.num_train_timesteps).long()
    timesteps = scheduler.timesteps[indices]
    sigmas = _reference_sigmas(scheduler, timesteps)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
    text_ids = torch.zeros(embeds.shape[1], 3)
    guidance = torch.tensor([guidance_scale]).expand(batch)
    pred = reference(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=pooled,
                     encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    vae_scale_factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
    pred = FluxPipeline._unpack_latents(pred, height=height * vae_scale_factor, width=width * vae_scale_factor,
                                        vae_scale_factor=vae_scale_factor)
    weight = compute_loss_weighting_for_sd3(weighting_scheme=weighting, sigmas=sigmas)
    target = noise - latents
    ref_loss = torch.mean((weight.float() * (pred.float() - target.float()) ** 2).reshape(batch, -1), 1).mean()
    ref_loss.backward()

    our_timesteps, our_sigmas = timesteps_for(u, sampling)
    assert torch.equal(our_timesteps, timesteps) and torch.equal(our_sigmas, sigmas.flatten())
    loss = step_loss(ours, "flux1", latents, noise, our_timesteps, our_sigmas, TextBatch(embeds, pooled),
                     guidance_scale, weighting)
    loss.backward()
    _compare(loss, ours, ref_loss, reference)


def test_sensitivity_lora_weights_move_the_loss():
    """The tiny model is sensitive: other LoRA weights give another loss (the parity above is not vacuous)."""
    from engine.zoo.flux1_tiny import tiny_components

    comps = tiny_components("dev")
    names = target_modules(comps.transformer, TARGET_PRESETS["attention"]["flux1"])
    add_lora(comps.transformer, names, RANK, ALPHA, seed=0)
    gen = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 16, 8, 8, generator=gen)
    text = TextBatch(torch.randn(1, 5, 48, generator=gen), torch.randn(1, 128, generator=gen))
    timesteps, sigmas = timesteps_for(torch.tensor([0.5]))
    with torch.no_grad():
        before = step_loss(comps.transformer, "flux1", latents, noise, timesteps, sigmas, text, 3.5)
        _set_lora(comps.transformer, _lora_weights(comps.transformer, seed=2))
        after = step_loss(comps.transformer, "flux1", latents, noise, timesteps, sigmas, text, 3.5)
    assert abs(float(after) - float(before)) >= 0.01


@pytest.mark.parametrize("weighting,sampling", [("none", "uniform"), ("cosmap", "sigmoid")])
def test_flux2_klein_step_matches_diffusers(weighting, sampling):
    """train_dreambooth_lora_flux2_klein.py: VAE mode -> _patchify_latents -> BatchNorm statistics, then the
    same flow-matching step with FLUX.2's packing, 4-axis ids and no guidance (klein has no guidance embedder)."""
    from diffusers import Flux2KleinPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from engine.models.common.handles import FluxVAE
    from engine.models.flux2.vae import Flux2Autoencoder
    from engine.memory.manager import MemoryManager
    from engine.sampling.vae import encode
    from engine.zoo.flux2_tiny import tiny_flux2

    tiny = tiny_flux2("klein")
    scheduler = tiny.scheduler()
    vae = tiny.vae
    gen = torch.Generator().manual_seed(21)
    batch = 2
    pixels = torch.rand(batch, 64, 48, 3, generator=gen)  # IMAGE layout, as our cache reads images

    # the script's latents (cache_latents: latent_dist.mode()) against our cache's encoding
    with torch.no_grad():
        raw = vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
        model_input = Flux2KleinPipeline._patchify_latents(raw)
        bn_mean = vae.bn.running_mean.view(1, -1, 1, 1)
        bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        model_input = (model_input - bn_mean) / bn_std
    ours_latents = encode(FluxVAE(vae=Flux2Autoencoder(vae), scaling_factor=1.0, shift_factor=0.0), pixels,
                          MemoryManager(device="cpu"))
    torch.testing.assert_close(ours_latents, model_input, atol=TOLERANCE, rtol=TOLERANCE)

    names = target_modules(tiny.transformer, TARGET_PRESETS["attention+mlp"]["flux2"])
    reference = _reference_transformer(tiny.transformer, names)
    ours = tiny.transformer
    add_lora(ours, names, RANK, ALPHA, seed=0)
    weights = _lora_weights(ours, seed=6)
    _set_lora(ours, weights)
    _set_lora(reference, weights)

    noise = torch.randn(model_input.shape, generator=gen)
    embeds = torch.randn(batch, 9, ours.config.joint_attention_dim, generator=gen)
    scheme = {"uniform": "none", "sigmoid": "logit_normal"}[sampling]
    u = compute_density_for_timestep_sampling(scheme, batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                              generator=torch.Generator().manual_seed(4))
    assert torch.equal(sample_u(sampling, batch, torch.Generator().manual_seed(4)), u)

    indices = (u * scheduler.config.num_train_timesteps).long()
    timesteps = scheduler.timesteps[indices]
    sigmas = _reference_sigmas(scheduler, timesteps)
    noisy = (1.0 - sigmas) * model_input + sigmas * noise
    packed = Flux2KleinPipeline._pack_latents(noisy)
    ids = Flux2KleinPipeline._prepare_latent_ids(model_input)
    text_ids = Flux2KleinPipeline._prepare_text_ids(embeds)
    assert not reference.config.guidance_embeds
    pred = reference(hidden_states=packed, timestep=timesteps / 1000, guidance=None, encoder_hidden_states=embeds,
                     txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
    pred = Flux2KleinPipeline._unpack_latents_with_ids(pred[:, : packed.size(1):], ids)
    weight = compute_loss_weighting_for_sd3(weighting_scheme=weighting, sigmas=sigmas)
    target = noise - model_input
    ref_loss = torch.mean((weight.float() * (pred.float() - target.float()) ** 2).reshape(batch, -1), 1).mean()
    ref_loss.backward()

    our_timesteps, our_sigmas = timesteps_for(u, sampling)
    loss = step_loss(ours, "flux2", ours_latents, noise, our_timesteps, our_sigmas, TextBatch(embeds), 1.0,
                     weighting)
    loss.backward()
    _compare(loss, ours, ref_loss, reference)
