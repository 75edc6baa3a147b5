"""Settings, users and userdata as ComfyUI 0.8 answers them (tests/fixtures/comfy_reference/frontend_routes.json):
one settings file per user written atomically, userdata names contained in the user's folder like /view."""

from __future__ import annotations

import json

import pytest

from engine.server.app import create_app
from tests.support.server import make_config, make_runtime

pytestmark = pytest.mark.asyncio


async def test_settings_merge_and_single_setting(client):
    assert await (await client.get("/api/settings")).json() == {}
    assert (await client.post("/api/settings/Comfy.Capture.Example", json=42)).status == 200
    assert await (await client.get("/api/settings/Comfy.Capture.Example")).json() == 42
    assert (await client.post("/api/settings", json={"Comfy.Capture.Two": "x", "A": [1]})).status == 200
    assert await (await client.get("/settings")).json() == {"Comfy.Capture.Example": 42, "Comfy.Capture.Two": "x",
                                                           "A": [1]}
    assert await (await client.get("/api/settings/unknown")).json() is None


async def test_settings_bad_bodies_are_400(client):
    response = await client.post("/api/settings", data=b"[1, 2]")
    assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request"
    response = await client.post("/api/settings/x", data=b"{not json")
    assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_json"


async def test_settings_survive_a_restart_in_the_user_folder(aiohttp_client, tmp_path):
    first = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path)))
    await first.post("/api/settings/Comfy.ColorPalette", json="light")
    await first.close()
    path = tmp_path / "user" / "default" / "comfy.settings.json"
    assert json.loads(path.read_text()) == {"Comfy.ColorPalette": "light"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]  # written through a temp file
    second = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path)))
    assert await (await second.get("/api/settings")).json() == {"Comfy.ColorPalette": "light"}


async def test_corrupt_settings_file_answers_empty_and_is_replaced_on_write(client, tmp_path):
    folder = tmp_path / "user" / "default"
    folder.mkdir(parents=True)
    (folder / "comfy.settings.json").write_text("{half")
    assert await (await client.get("/api/settings")).json() == {}
    await client.post("/api/settings/a", json=1)
    assert json.loads((folder / "comfy.settings.json").read_text()) == {"a": 1}


async def test_comfy_user_header_selects_an_existing_user_only(client, tmp_path):
    (tmp_path / "user" / "alice").mkdir(parents=True)
    await client.post("/api/settings/who", json="alice", headers={"comfy-user": "alice"})
    await client.post("/api/settings/who", json="nobody", headers={"comfy-user": "nobody"})
    assert json.loads((tmp_path / "user" / "alice" / "comfy.settings.json").read_text()) == {"who": "alice"}
    assert json.loads((tmp_path / "user" / "default" / "comfy.settings.json").read_text()) == {"who": "nobody"}
    for bad in ("../x", "fluxgraph", "a/b"):
        response = await client.get("/api/settings", headers={"comfy-user": bad})
        assert response.status == 400, bad


async def test_users(client):
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
    response = await client.post("/api/users", json={"username": "bob"})
    assert response.status == 400 and (await response.json())["error"]["type"] == "single_user_mode"


async def test_userdata_write_list_read_move_delete(client, tmp_path):
    response = await client.post("/api/userdata/workflows%2Fcapture.json?overwrite=true&full_info=true",
                                 data=b'{"nodes": []}')
    assert response.status == 200
    info = await response.json()
    assert info["path"] == "workflows/capture.json" and info["size"] == 13 and {"modified", "created"} <= set(info)
    assert (tmp_path / "user" / "default" / "workflows" / "capture.json").read_bytes() == b'{"nodes": []}'
    response = await client.post("/api/userdata/workflows%2Fcapture.json?overwrite=false", data=b"{}")
    assert response.status == 409
    response = await client.post("/api/userdata/workflows%2Fsub%2Fb.json", data=b"{}")
    assert await response.json() == "workflows/sub/b.json"

    listing = await (await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")).json()
    assert [e["path"] for e in listing] == ["capture.json", "sub/b.json"]
    assert await (await client.get("/api/userdata?dir=workflows")).json() == ["capture.json"]
    assert await (await client.get("/api/userdata?dir=workflows&recurse=true&split=true")).json() == [
        ["capture.json", "capture.json"], ["sub/b.json", "sub", "b.json"]]
    assert (await client.get("/api/userdata?dir=nope")).status == 404
    assert (await client.get("/api/userdata")).status == 400
    v2 = await (await client.get("/api/v2/userdata?path=workflows")).json()
    assert [(e["name"], e["path"], e["type"]) for e in v2] == [
        ("capture.json", "workflows/capture.json", "file"), ("sub", "workflows/sub", "directory")]

    response = await client.get("/api/userdata/workflows%2Fcapture.json")
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.json() == {"nodes": []}
    response = await client.post("/api/userdata/workflows%2Fcapture.json/move/workflows%2Fcapture2.json")
    assert await response.json() == "workflows/capture2.json"
    response = await client.post("/api/userdata/workflows%2Fsub%2Fb.json/move/workflows%2Fcapture2.json"
                                 "?overwrite=false")
    assert response.status == 409
    assert (await client.delete("/api/userdata/workflows%2Fcapture2.json")).status == 204
    assert (await client.get("/api/userdata/workflows%2Fcapture2.json")).status == 404
    assert (await client.delete("/api/userdata/workflows%2Fcapture2.json")).status == 404


@pytest.mark.parametrize("name,status", [
    ("workflows%2F..%2F..%2Fcomfy.settings.json", 400), ("%2Fetc%2Fpasswd", 400), ("a%00b.json", 400),
    ("a%E2%80%AEb.json", 400), ("x" * 300 + ".json", 400), ("escape%2Fx.json", 403)])
async def test_userdata_names_are_checked_and_contained(client, tmp_path, name, status):
    (tmp_path / "user" / "default").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "user" / "default" / "escape").symlink_to(tmp_path / "outside")
    for method in ("GET", "POST", "DELETE"):
        response = await client.request(method, f"/api/userdata/{name}", data=b"{}")
        assert response.status == status, (method, name)
        assert "error" in await response.json()
    assert not list((tmp_path / "outside").iterdir())


async def test_userdata_body_size_is_limited(aiohttp_client, tmp_path):
    config = make_config(tmp_path)
    config.max_upload_bytes = 1000
    client = await aiohttp_client(create_app(make_runtime(tmp_path), config))
    response = await client.post("/api/userdata/big.json", data=b"x" * 2000)
    assert response.status == 413
    assert not (tmp_path / "user" / "default" / "big.json").exists()


async def test_userdata_active_types_are_not_served_as_pages(client):
    await client.post("/api/userdata/page.html", data=b"<script>alert(1)</script>")
    response = await client.get("/api/userdata/page.html")
    assert response.status == 200 and response.content_type == "application/octet-stream"


async def test_fresh_user_lists_standard_folders_and_gets_an_empty_user_css(client):
    for folder in ("workflows", "subgraphs"):
        response = await client.get(f"/api/userdata?dir={folder}&recurse=true&split=false&full_info=true")
        assert response.status == 200 and await response.json() == []
    response = await client.get("/api/userdata/user.css")
    assert response.status == 200 and response.content_type == "text/css"


async def test_streamed_bodies_past_their_limit_are_413_and_write_nothing(aiohttp_client, tmp_path, monkeypatch):
    """A chunked body carries no Content-Length to refuse up front: the count while reading holds the line."""
    from engine.server import routes_user

    monkeypatch.setattr(routes_user, "MAX_SETTINGS_BYTES", 1000)
    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path, max_upload_bytes=1000)))

    async def chunks():  # no Content-Length: aiohttp sends it chunked
        for _ in range(8):
            yield b"x" * 256

    for url in ("/api/settings", "/api/userdata/workflows%2Fbig.json"):
        response = await client.post(url, data=chunks())
        body = await response.json()
        assert response.status == 413, (url, body)
        assert body["error"]["type"] == "request_too_large" and "1000 bytes" in body["error"]["details"]
    assert not (tmp_path / "user" / "default" / "workflows" / "big.json").exists()
    small = await client.post("/api/userdata/workflows%2Fsmall.json", data=b"{}")
    assert small.status == 200
