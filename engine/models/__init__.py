"""Model loading: find files under models/, detect their layout, build diffusers/transformers modules offline.

Entry points (see docs/models.md): flux_transformer.load_flux_transformer, text_encoders.load_flux_text_encoders,
vae.load_flux_vae, checkpoint.load_flux_checkpoint, extra_model_paths.load_extra_model_paths,
zoo.write_tiny_zoo / zoo.prepare_models, tiny.tiny_components. Nothing here imports torch at import time.
"""
