"""Model loading: find files under models/, detect their layout, build diffusers/transformers modules offline."""
