"""Live sampling previews over the websocket: binary frames 1 and 4 during a tiny FLUX run, one per step,
sized to --preview-size, frame 4 only for clients that announced `supports_preview_metadata`, none with
--preview-method none (or a prompt's own `extra_data.preview_method: none`)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct

import pytest
from PIL import Image

from engine.backends.factory import make_backend
from engine.server import add_serve_arguments, build_config
from engine.server.app import create_app
from tests.support.server import make_config, registry
from tests.support.waiting import DEADLINE

pytestmark = [pytest.mark.slow]
STEPS = 3


def _prompt(seed: int = 42) -> dict:
    from tests.support.flux import txt2img_prompt

    prompt = txt2img_prompt("schnell", width=64, height=64, steps=STEPS, guidance=None, seed=seed)
    prompt["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return prompt


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    from engine.zoo.vae_approx import write_tiny_decoders

    models = tmp_path_factory.mktemp("vae_approx_models")
    write_tiny_decoders(models, width=8, blocks=(1, 1, 1, 1))
    return models / "vae_approx"


def _server(aiohttp_client, tmp_path, decoder_dir=None, **config):
    from engine.backends.runtime import Runtime
    from tests.support.flux import zoo_base

    runtime = Runtime.create(base_dir=zoo_base(), registry=registry())
    if decoder_dir is not None:
        runtime.folders.add_model_dir("vae_approx", decoder_dir, first=True)
    return aiohttp_client(create_app(runtime, make_config(tmp_path, **config)))


async def _run(client, client_id: str, flags: dict | None = None, extra: dict | None = None, seed: int = 42):
    """Queue the tiny prompt; returns (binary frames, JSON messages) seen until it is done."""
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    if flags is not None:
        await ws.send_str(json.dumps({"type": "feature_flags", "data": flags}))
    body = {"prompt": _prompt(seed), "client_id": client_id, **({"extra_data": extra} if extra else {})}
    response = await client.post("/prompt", json=body)
    assert response.status == 200, await response.text()
    prompt_id = (await response.json())["prompt_id"]
    frames, messages = [], []
    while True:
        message = await asyncio.wait_for(ws.receive(), DEADLINE)
        if message.type.name == "BINARY":
            frames.append(message.data)
            continue
        assert message.type.name == "TEXT", message
        data = json.loads(message.data)
        messages.append(data)
        if data["type"] == "execution_error":
            pytest.fail(str(data))
        if data["type"] == "executing" and data["data"].get("node") is None \
                and data["data"].get("prompt_id") == prompt_id:
            await ws.close()
            return prompt_id, frames, messages


def _sampler_progress(messages: list[dict]) -> list[int]:
    return [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "9"]


@pytest.mark.asyncio
async def test_plain_clients_get_frame_1_once_per_step(aiohttp_client, tmp_path):
    client = await _server(aiohttp_client, tmp_path, preview_method="latent2rgb")
    _, frames, messages = await _run(client, "plain")
    assert _sampler_progress(messages) == list(range(1, STEPS + 1))
    assert len(frames) == STEPS
    for frame in frames:
        kind, image_format = struct.unpack(">II", frame[:8])
        assert (kind, image_format) == (1, 1)  # PREVIEW_IMAGE, JPEG
        assert Image.open(io.BytesIO(frame[8:])).size == (8, 8)  # latent2rgb: 64x64 pixels at 1/8


@pytest.mark.asyncio
async def test_clients_announcing_metadata_get_frame_4_and_taesd_is_sized(aiohttp_client, tmp_path, decoder_dir):
    client = await _server(aiohttp_client, tmp_path, decoder_dir, preview_method="auto", preview_size=32)
    prompt_id, frames, _ = await _run(client, "meta", flags={"supports_preview_metadata": True})
    assert len(frames) == STEPS
    for frame in frames:
        kind, length = struct.unpack(">II", frame[:8])
        assert kind == 4
        metadata = json.loads(frame[8:8 + length])
        assert metadata == {"node_id": "9", "prompt_id": prompt_id, "display_node_id": "9", "parent_node_id": None,
                            "real_node_id": "9", "image_type": "image/jpeg"}
        picture = Image.open(io.BytesIO(frame[8 + length:]))
        assert picture.size == (32, 32)  # taesd decodes 64x64 pixels; --preview-size 32 shrinks the latent first


@pytest.mark.asyncio
async def test_no_frames_with_preview_method_none(aiohttp_client, tmp_path, decoder_dir):
    client = await _server(aiohttp_client, tmp_path, decoder_dir, preview_method="none")
    _, frames, messages = await _run(client, "quiet", flags={"supports_preview_metadata": True})
    assert frames == [] and _sampler_progress(messages) == list(range(1, STEPS + 1))


@pytest.mark.asyncio
async def test_a_prompt_can_turn_previews_off_for_itself(aiohttp_client, tmp_path):
    client = await _server(aiohttp_client, tmp_path, preview_method="auto")
    _, frames, _ = await _run(client, "own", extra={"preview_method": "none"})
    assert frames == []
    _, frames, _ = await _run(client, "own", extra={"preview_method": "default"}, seed=7)  # the server's method
    assert len(frames) == STEPS


def _parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_flags_reach_the_backend(tmp_path, capsys):
    config = build_config(_parse())
    assert (config.preview_method, config.preview_size) == ("auto", 512)
    config = build_config(_parse("--preview-method", "taesd", "--preview-size", "256"))
    assert (config.preview_method, config.preview_size) == ("taesd", 256)
    from tests.support.server import make_runtime

    backend = make_backend(make_runtime(tmp_path), config)
    assert (backend.preview_method, backend.preview_size) == ("taesd", 256)
    with pytest.raises(SystemExit):
        _parse("--preview-method", "fast")
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--preview-size must be between 16 and 8192"):
        build_config(_parse("--preview-size", "0"))
