"""FLUX LoRA training (FLUX.1 dev, FLUX.2 klein) shared by the TrainFluxLora node and `fluxgraph train lora`."""
