"""FLUX Redux style model (STYLE_MODEL): the image embedder that turns SigLIP features into T5-width tokens.

Layouts: the BFL release file (flux1-redux-dev.safetensors: `redux_up.*`, `redux_down.*`, which are also
diffusers' ReduxImageEncoder keys) and diffusers folders (the embedder folder, or a FluxPriorReduxPipeline
folder with `image_embedder/`). Widths come from the shapes: redux_up is [3 x text width, vision width].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate, load_folder_weights
from engine.models.common.dtypes import module_dtype
from engine.models.common.file_kind import wrong_loader_message
from engine.models.common.safetensors_io import ModelFileError, open_safetensors

_KEYS = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")


@dataclass(frozen=True)
class ReduxStyleModel:
    embedder: Any  # diffusers ReduxImageEncoder
    vision_width: int
    text_width: int
    source: str = ""


def load_style_model(path: str | Path) -> ReduxStyleModel:
    """StyleModelLoader: the Redux image embedder from a file or folder."""
    path = Path(path)
    if path.is_dir():
        folder = path / "image_embedder" if (path / "image_embedder").is_dir() else path
        state, source = load_folder_weights(folder), folder
    else:
        state, source = open_safetensors(path).load(), path
    if not all(k in state for k in _KEYS):
        raise ModelFileError(source, wrong_loader_message(state.keys(), "a FLUX Redux image embedder "
                                                                        "(redux_up / redux_down)"))
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    up, down = state["redux_up.weight"], state["redux_down.weight"]
    vision_width, text_width = int(up.shape[1]), int(down.shape[0])
    if up.shape[0] != 3 * text_width or down.shape[1] != up.shape[0]:
        raise ModelFileError(source, f"redux_up {tuple(up.shape)} and redux_down {tuple(down.shape)} do not fit "
                                     "together (expected [3d, v] and [d, 3d])")
    embedder = instantiate(lambda: ReduxImageEncoder(redux_dim=vision_width, txt_in_features=text_width),
                           {k: state[k] for k in _KEYS}, source)
    return ReduxStyleModel(embedder=embedder, vision_width=vision_width, text_width=text_width, source=str(path))


def style_tokens(style: ReduxStyleModel, clip_vision_output: Any, memory: Any) -> Any:
    """The Redux tokens [N, T, text width] of the encoded images."""
    import torch

    if not isinstance(style, ReduxStyleModel):
        raise TypeError(f"style_model input is not a FLUX Redux model (got {type(style).__name__})")
    features = clip_vision_output["last_hidden_state"]
    if features.shape[-1] != style.vision_width:
        raise ValueError(f"the vision model gives features {features.shape[-1]} wide but this Redux model takes "
                         f"{style.vision_width}: use the SigLIP model it was trained with")
    with torch.no_grad(), memory.use(style.embedder):
        tokens = style.embedder(features.to(memory.device, module_dtype(style.embedder))).image_embeds
    return tokens.float().cpu()
