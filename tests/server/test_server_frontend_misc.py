"""i18n, global_subgraphs, experiment/models, view_metadata, internal/*, templates, user.css and fluxgraph's
frontend extension, with ComfyUI's shapes (tests/fixtures/comfy_reference/frontend_routes.json)."""

from __future__ import annotations

import json
import logging
import struct

import pytest

from engine.server import routes_frontend
from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from tests.support.reference import REFERENCE_DIR
from tests.support.server import make_config, make_runtime

pytestmark = pytest.mark.asyncio
CAPTURES = {c["request"]: c for c in json.loads((REFERENCE_DIR / "frontend_routes.json").read_text())["captures"]}


def _safetensors(path, metadata=None):
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")


async def test_constant_routes(client):
    for route, body in (("i18n", {}), ("global_subgraphs", {}), ("workflow_templates", {})):
        response = await client.get(f"/api/{route}")
        assert response.status == 200 and await response.json() == body


async def test_experiment_models(client, tmp_path):
    _safetensors(tmp_path / "models" / "vae" / "ae.safetensors")
    folders = await (await client.get("/api/experiment/models")).json()
    assert {"name", "folders"} == set(folders[0]) and "configs" not in [f["name"] for f in folders]
    assert {"vae", "loras", "diffusion_models"} <= {f["name"] for f in folders}
    files = await (await client.get("/api/experiment/models/vae")).json()
    capture = CAPTURES["GET /api/experiment/models/vae"]["body"][0]
    assert [f["name"] for f in files] == ["ae.safetensors"] and set(files[0]) == set(capture)
    assert (await client.get("/api/experiment/models/nope")).status == 404
    (tmp_path / "models" / "unet").mkdir(parents=True)
    (tmp_path / "models" / "unet" / "flux1-dev-Q4_K_S.gguf").write_bytes(b"GGUF")  # the GGUF loaders' files too
    files = await (await client.get("/api/experiment/models/diffusion_models")).json()
    assert [f["name"] for f in files] == ["flux1-dev-Q4_K_S.gguf"]


async def test_view_metadata(client, tmp_path):
    _safetensors(tmp_path / "models" / "loras" / "a.safetensors", {"ss_network_dim": "4"})
    _safetensors(tmp_path / "models" / "loras" / "plain.safetensors")
    (tmp_path / "models" / "loras" / "junk.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    response = await client.get("/api/view_metadata/loras?filename=a.safetensors")
    assert await response.json() == {"ss_network_dim": "4"}
    for name in ("plain.safetensors", "junk.safetensors", "none.safetensors", ""):
        assert (await client.get(f"/api/view_metadata/loras?filename={name}")).status == 404, name
    assert (await client.get("/api/view_metadata/loras?filename=../../x.safetensors")).status == 400


async def test_internal_folder_paths_and_logs(client):
    paths = await (await client.get("/internal/folder_paths")).json()
    assert set(CAPTURES["GET /internal/folder_paths"]["body"]) & set(paths) >= {"checkpoints", "loras", "vae"}
    assert all(isinstance(v, list) for v in paths.values())
    logging.getLogger("engine.test").warning("a line for the log panel")
    raw = await (await client.get("/internal/logs/raw")).json()
    assert any("a line for the log panel" in e["m"] for e in raw["entries"]) and {"t", "m"} == set(raw["entries"][0])
    assert "a line for the log panel" in await (await client.get("/internal/logs")).json()
    assert (await client.post("/internal/logs/subscribe", json={"enabled": True, "clientId": "x"})).status == 200


async def test_templates_without_the_package_are_empty_not_404(client, monkeypatch):
    monkeypatch.setattr(routes_frontend, "TEMPLATE_PACKAGES", ("fluxgraph_no_such_templates_package",))
    response = await client.get("/templates/index.json")
    assert response.status == 200 and await response.json() == []
    assert await (await client.get("/templates/index_logo.json")).json() == {}
    response = await client.get("/templates/flux_dev.json")
    assert response.status == 404 and "error" in await response.json()
    assert (await client.get("/templates/..%2F..%2Fx.json")).status == 400


async def test_templates_come_from_the_installed_package(client):
    pytest.importorskip("comfyui_workflow_templates_json")  # the 'templates' extra, installed by make test
    index = await (await client.get("/templates/index.json")).json()
    names = {template["name"] for group in index for template in group["templates"]}
    assert "flux_schnell" in names
    workflow = await client.get("/templates/flux_schnell.json")
    assert workflow.status == 200 and "nodes" in await workflow.json()


async def test_user_css(client, tmp_path):
    response = await client.get("/user.css")
    assert response.status == 200 and response.content_type == "text/css" and await response.text() == ""
    (tmp_path / "user" / "default").mkdir(parents=True, exist_ok=True)
    (tmp_path / "user" / "default" / "user.css").write_text("body { color: red }")
    assert await (await client.get("/user.css")).text() == "body { color: red }"


async def test_fluxgraph_extension_is_listed_and_served(aiohttp_client, tmp_path):
    """The shipped web/extensions/ scripts, as ComfyUI lists a node pack's WEB_DIRECTORY."""
    config = make_config(tmp_path, web_dir=PROJECT_ROOT / "web")
    client = await aiohttp_client(create_app(make_runtime(tmp_path), config))
    urls = await (await client.get("/api/extensions")).json()
    assert "/extensions/fluxgraph/segmentation_legend.js" in urls
    response = await client.get("/extensions/fluxgraph/segmentation_legend.js")
    assert response.status == 200 and response.content_type == "application/javascript"
    assert "registerExtension" in await response.text()
    missing = await client.get("/extensions/fluxgraph/nope.js")
    assert missing.status == 404


async def test_system_stats_tells_the_frontend_to_stay_offline(client):
    assert "--disable-api-nodes" in (await (await client.get("/api/system_stats")).json())["system"]["argv"]
