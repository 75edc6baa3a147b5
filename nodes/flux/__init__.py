"""The FLUX pack: ComfyUI's loaders, prompt encoders, latent/VAE and sampling nodes for FLUX.1.

Declarations import no torch; each node function loads engine.sampling / engine.models when it runs.
The ML code lives in engine/sampling (sampling) and engine/models (loading); these nodes only adapt.
"""

from . import conditioning, inpaint, kontext, latent, loaders, lora, redux, reference, sampling, training
from . import gguf  # the ComfyUI-GGUF pack's loaders
from . import control, preprocessors  # structural control: Depth/Canny, ControlNets, preprocessors
from . import speed

NODES = [*loaders.NODES, *conditioning.NODES, *latent.NODES, *sampling.NODES, *reference.NODES, *inpaint.NODES,
         *kontext.NODES, *lora.NODES, *redux.NODES]
NODES += [*control.NODES, *preprocessors.NODES]
NODES += training.NODES  # LoRA training (LoadFluxLoraDataset, TrainFluxLora)
NODES += gguf.NODES  # UnetLoaderGGUF, CLIPLoaderGGUF, DualCLIPLoaderGGUF
NODES += speed.NODES  # step caches, TorchCompileModel
