"""The FLUX.2 pack: EmptyFlux2LatentImage and Flux2Scheduler.

Everything else a FLUX.2 graph uses is shared with FLUX.1 and other packs: UNETLoader / VAELoader detect
FLUX.2 weights, CLIPLoader type 'flux2' loads its Qwen3 / Mistral text encoder, CLIPTextEncode, FluxGuidance,
CFGGuider, SamplerCustomAdvanced, ReferenceLatent, VAEEncode / VAEDecode dispatch on the handles they get.
Declarations import no torch; the ML code is in engine/sampling/flux2_*.py and engine/models/flux2_*.py.
"""

from engine.models.common.family_check import family_errors

from . import latent

NODES = [*latent.NODES]
# A FLUX.1 model in a FLUX.2 graph (or the reverse) is refused at validation, naming the odd loader's file.
GRAPH_VALIDATORS = [family_errors]
