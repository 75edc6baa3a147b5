"""Flow-matching sampling for FLUX: sigma schedules, samplers, guidance, latent packing, noise, text and VAE.

Pure ML code: nothing here knows about nodes, graphs or the server. The node pack `nodes/flux` is a thin
adapter over these modules; benchmarks and tests call them directly.

Conventions (the same as ComfyUI's, so graphs mix with other packs):
- A LATENT's `samples` hold raw VAE latents [B, 16, H/8, W/8]; the sampler maps them into the model's
  space ((x - shift) * scale) on the way in and back on the way out (`latents.LatentFormat`).
- Sigmas run from about 1 (pure noise) down to 0; x_sigma = (1 - sigma) * x0 + sigma * noise
  (rectified flow, ComfyUI's CONST parameterisation); the transformer predicts the velocity noise - x0.
- Noise is drawn on the CPU, one generator per batch item (`noise.py`), so an image depends only on its
  own seed, never on its batch position or on the device.
"""
