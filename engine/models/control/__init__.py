"""Structural-control models: ControlNets for FLUX.1 (diffusers FluxControlNetModel) and Depth Anything V2."""
