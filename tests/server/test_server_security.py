"""Path traversal and browser attacks: /view, uploads, file names inside prompts, Origin, Host, auth, CORS."""

from __future__ import annotations

import io
import json
import os

import pytest
import pytest_asyncio
from aiohttp import FormData
from PIL import Image

from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.server.security import HostPolicy
from tests.support.server import image_graph, make_config, make_runtime

pytestmark = pytest.mark.asyncio
LOCAL = "http://127.0.0.1:8188"


def png_bytes(size=(4, 4), mode="RGBA", color=(0, 255, 0, 128), text=None) -> bytes:
    buffer = io.BytesIO()
    picture = Image.new(mode, size, color)
    if text:
        from PIL import PngImagePlugin
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        picture.save(buffer, format="PNG", pnginfo=info)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_form(data: bytes, filename="up.png", **fields) -> FormData:
    form = FormData()
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


@pytest.fixture
def base(tmp_path):
    for sub in ("input", "output", "temp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "output" / "ok.png").write_bytes(png_bytes())
    (tmp_path / "output" / "page.html").write_text("<script>alert(1)</script>")
    (tmp_path / "output" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>x</script></svg>")
    (tmp_path / "secret.png").write_bytes(png_bytes())  # outside every root
    os.symlink(tmp_path / "secret.png", tmp_path / "output" / "link.png")
    os.symlink(tmp_path, tmp_path / "output" / "escape_dir")
    return tmp_path


async def make_client(aiohttp_client, base, **config):
    app = create_app(make_runtime(base), make_config(base, **config))
    return await aiohttp_client(app)


@pytest_asyncio.fixture
async def client(aiohttp_client, base):
    return await make_client(aiohttp_client, base)


# ----------------------------------------------------------------------------- /view
@pytest.mark.parametrize("params, status", [
    ({"filename": "../secret.png"}, 400),
    ({"filename": "..\\secret.png"}, 400),
    ({"filename": "/etc/passwd"}, 400),
    ({"filename": "ok.png", "subfolder": ".."}, 400),
    ({"filename": "ok.png", "subfolder": "../.."}, 400),
    ({"filename": "ok.png", "subfolder": "/etc"}, 400),
    ({"filename": "ok.png", "type": "models"}, 400),
    ({"filename": "ok.png\x00.txt"}, 400),
    ({"filename": ""}, 400),
    ({"filename": "link.png"}, 403),  # a symlink pointing outside output/
    ({"filename": "secret.png", "subfolder": "escape_dir"}, 403),
    ({"filename": "../secret.png [output]"}, 400),
    ({"filename": "nope.png"}, 404),
    ({}, 404),
])
async def test_view_refuses_paths_outside_its_roots(client, params, status):
    response = await client.get("/view", params=params)
    assert response.status == status
    body = await response.json()
    assert body["error"]["message"] and body["error"]["type"]


async def test_view_encoded_traversal_in_raw_query_is_refused(client):
    for raw in ("filename=%2e%2e%2fsecret.png", "filename=%2E%2E/secret.png", "filename=..%2fsecret.png",
                "filename=ok.png&subfolder=%2e%2e"):
        response = await client.get("/view?" + raw)
        assert response.status == 400, raw
    double = await client.get("/view?filename=%252e%252e%252fsecret.png")  # decodes once: a literal name
    assert double.status == 404


async def test_view_serves_only_images_inline(client):
    good = await client.get("/view", params={"filename": "ok.png"})
    assert good.status == 200 and good.headers["Content-Disposition"].startswith("inline")
    for name in ("page.html", "logo.svg"):
        response = await client.get("/view", params={"filename": name})
        assert response.status == 200
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]


async def test_view_channels_and_previews(client):
    alpha = await client.get("/view", params={"filename": "ok.png", "channel": "a"})
    picture = Image.open(io.BytesIO(await alpha.read()))
    assert picture.mode == "RGBA" and picture.getpixel((0, 0)) == (0, 0, 0, 128)
    rgb = Image.open(io.BytesIO(await (await client.get("/view", params={"filename": "ok.png",
                                                                         "channel": "rgb"})).read()))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (0, 255, 0)
    preview = await client.get("/view", params={"filename": "ok.png", "preview": "jpeg;50"})
    assert preview.headers["Content-Type"] == "image/jpeg"
    bad = await client.get("/view", params={"filename": "ok.png", "preview": "webp;abc"})
    assert bad.status == 400 and "quality" in (await bad.json())["error"]["message"]
    not_image = await client.get("/view", params={"filename": "page.html", "channel": "rgb"})
    assert not_image.status == 400


async def test_static_files_stay_inside_the_web_folder(client, base):
    os.symlink(base / "secret.png", base / "web" / "linked.png")
    assert (await client.get("/index.html")).status == 200
    for path in ("/linked.png", "/%2e%2e/secret.png", "/..%2fsecret.png"):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"]["type"] == "not_found"
    missing_script = await client.get("/nothing.js")  # a 404 in the type asked for (engine/server/frontends.py)
    assert (missing_script.status, missing_script.content_type) == (404, "text/javascript")


# ----------------------------------------------------------------------------- uploads
async def test_upload_sanitises_names_and_reuses_identical_content(client, base):
    data = png_bytes()
    first = await (await client.post("/upload/image", data=upload_form(data, "../../evil.png"))).json()
    assert first == {"name": "evil.png", "subfolder": "", "type": "input"}
    assert (base / "input" / "evil.png").read_bytes() == data and not (base / "evil.png").exists()
    again = await (await client.post("/upload/image", data=upload_form(data, "evil.png"))).json()
    assert again["name"] == "evil.png"  # identical content: reused
    other = png_bytes(color=(1, 2, 3, 255))
    renamed = await (await client.post("/upload/image", data=upload_form(other, "evil.png"))).json()
    assert renamed["name"] == "evil (1).png"
    replaced = await (await client.post("/upload/image", data=upload_form(other, "evil.png", overwrite="true"))).json()
    assert replaced["name"] == "evil.png" and (base / "input" / "evil.png").read_bytes() == other
    weird = await (await client.post("/upload/image", data=upload_form(data, "..\\a|b<c>.png"))).json()
    assert weird["name"] == "a_b_c_.png"
    sub = await client.post("/upload/image", data=upload_form(data, "s.png", subfolder="masks/x", type="temp"))
    assert (await sub.json()) == {"name": "s.png", "subfolder": "masks/x", "type": "temp"}
    assert (base / "temp" / "masks" / "x" / "s.png").is_file()


@pytest.mark.parametrize("filename, fields, status, words", [
    ("x.png", {"subfolder": "../.."}, 400, "'..'"),
    ("x.png", {"subfolder": "/tmp"}, 400, "Absolute"),
    ("x.png", {"subfolder": "escape_dir", "type": "output"}, 403, "leaves its folder"),
    ("x.png", {"type": "models"}, 400, "Unknown upload type"),
    ("page.html", {}, 400, "image file extension"),
    ("x.svg", {}, 400, "image file extension"),
    ("...", {}, 400, "no usable file name"),
    (".png", {}, 400, "image file extension"),  # a hidden file named "png", with no extension
])
async def test_upload_refusals(client, filename, fields, status, words):
    response = await client.post("/upload/image", data=upload_form(png_bytes(), filename, **fields))
    assert response.status == status
    body = await response.json()
    assert words in body["error"]["message"] + body["error"]["details"]


async def test_upload_must_decode_as_an_image(client):
    html = b"<html><script>alert(document.cookie)</script></html>"
    response = await client.post("/upload/image", data=upload_form(html, "x.png"))
    assert response.status == 400 and (await response.json())["error"]["type"] == "not_an_image"
    truncated = await client.post("/upload/image", data=upload_form(png_bytes()[:40], "x.png"))
    assert truncated.status == 400


async def test_upload_size_and_decompression_bomb_limits(aiohttp_client, base):
    client = await make_client(aiohttp_client, base, max_upload_bytes=20_000, max_image_pixels=100 * 100)
    big = os.urandom(30_000)
    response = await client.post("/upload/image", data=upload_form(big, "big.png"))
    assert response.status == 413 and "larger than the limit" in (await response.json())["error"]["message"]
    bomb = png_bytes(size=(2000, 2000), mode="L", color=0)  # tiny file, 4 megapixels
    assert len(bomb) < 20_000
    response = await client.post("/upload/image", data=upload_form(bomb, "bomb.png"))
    assert response.status == 400 and (await response.json())["error"]["type"] == "image_too_large"
    not_multipart = await client.post("/upload/image", data=b"xx", headers={"Content-Type": "text/plain"})
    assert not_multipart.status == 400 and "multipart" in (await not_multipart.json())["error"]["message"]
    missing = FormData()
    missing.add_field("other", "1")
    assert (await client.post("/upload/image", data=missing)).status == 400


async def test_upload_mask_replaces_alpha_and_keeps_text_chunks(client, base):
    (base / "output" / "orig.png").write_bytes(png_bytes(size=(4, 4), mode="RGB", color=(9, 9, 9),
                                                         text={"prompt": "{}"}))
    mask = png_bytes(size=(4, 4), color=(0, 0, 0, 77))
    ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "output"})
    response = await client.post("/upload/mask", data=upload_form(mask, "m.png", original_ref=ref))
    assert await response.json() == {"name": "m.png", "subfolder": "", "type": "input"}
    picture = Image.open(base / "input" / "m.png")
    assert picture.getpixel((0, 0)) == (9, 9, 9, 77) and picture.text["prompt"] == "{}"
    escape = json.dumps({"filename": "secret.png", "subfolder": "escape_dir", "type": "output"})
    assert (await client.post("/upload/mask", data=upload_form(mask, "m.png", original_ref=escape))).status == 403
    traversal = json.dumps({"filename": "../secret.png"})
    assert (await client.post("/upload/mask", data=upload_form(mask, "m.png", original_ref=traversal))).status == 400
    assert (await client.post("/upload/mask", data=upload_form(mask, "m.png", original_ref="{"))).status == 400


# ----------------------------------------------------------------------------- file names in prompts
@pytest.mark.parametrize("node, input_name, value", [
    ("LoadImage", "image", "../secret.png"),
    ("LoadImage", "image", "/etc/passwd"),
    ("LoadImage", "image", "../../secret.png [output]"),
    ("LoadImage", "image", "escape_dir/secret.png [output]"),  # symlinked folder inside output/
    ("SaveImage", "filename_prefix", "../../pwned"),
    ("SaveImage", "filename_prefix", "/tmp/pwned"),
    ("TestPathString", "model_name", "../../../etc/shadow"),
])
async def test_prompt_file_names_get_the_view_containment_check(client, base, node, input_name, value):
    graph = image_graph()
    if node == "LoadImage":
        graph = {"1": {"class_type": "LoadImage", "inputs": {"image": value}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    elif node == "SaveImage":
        graph["2"]["inputs"]["filename_prefix"] = value
    else:
        graph = {"1": {"class_type": "TestPathString", "inputs": {"model_name": value}}}
    response = await client.post("/prompt", json={"prompt": graph})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = [e for entry in body["node_errors"].values() for e in entry["errors"]]
    unsafe = [e for e in errors if e["type"] == "unsafe_path"]
    assert unsafe and unsafe[0]["extra_info"] == {"input_name": input_name, "received_value": value}
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    assert not list((base / "output").glob("pwned*")) and not (base.parent / "pwned_00001_.png").exists()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors", "C:\\x.ckpt"])
async def test_model_names_are_checked_even_when_a_node_hook_accepts_anything(client, name):
    graph = {"1": {"class_type": "TestTrustingLoader", "inputs": {"ckpt_name": name}}}
    response = await client.post("/prompt", json={"prompt": graph})
    assert response.status == 400
    node_error = (await response.json())["node_errors"]["1"]
    assert node_error["class_type"] == "TestTrustingLoader" and node_error["dependent_outputs"] == ["1"]
    assert [e["type"] for e in node_error["errors"]] == ["unsafe_path"]


async def test_safe_nested_names_pass_the_check(client, base):
    (base / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (base / "models" / "checkpoints" / "sub" / "m.safetensors").write_bytes(b"x")
    graph = {"1": {"class_type": "TestTrustingLoader", "inputs": {"ckpt_name": "sub/m.safetensors"}}}
    assert (await client.post("/prompt", json={"prompt": graph})).status == 200


# ----------------------------------------------------------------------------- Origin, Host, auth, CORS
@pytest.mark.parametrize("headers, status", [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Origin": "http://127.0.0.1:9999"}, 403),  # another port on this machine
    ({"Origin": "https://127.0.0.1"}, 403),  # https: effective port 443, not this one
    ({"Origin": "file://"}, 403),
    ({"Origin": LOCAL}, 200),
    ({}, 200),  # scripts and curl send no Origin
])
async def test_cross_origin_state_changes_are_refused(client, headers, status):
    response = await client.post("/prompt", json={"prompt": image_graph()},
                                 headers={"Host": "127.0.0.1:8188", **headers})
    assert response.status == status
    if status == 403:
        assert (await response.json())["error"]["type"] == "origin_refused"
        assert (await (await client.get("/queue")).json())["queue_pending"] == []


async def test_cross_origin_websocket_is_refused(client):
    with pytest.raises(Exception):
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    with pytest.raises(Exception):
        await client.ws_connect("/ws", headers={"Origin": "null"})


@pytest.mark.parametrize("host, status", [
    ("evil.example", 403), ("evil.example:8188", 403), ("127.0.0.1.evil.example", 403),
    ("localhost:8188", 200), ("127.0.0.1", 200), ("[::1]:8188", 200), ("192.168.1.9:8188", 403),
    ("bad host", 400), ("a:notaport", 400),
])
async def test_host_allow_list_stops_dns_rebinding(client, host, status):
    response = await client.get("/object_info", headers={"Host": host})
    assert response.status == status


async def test_host_policy_when_listening_on_the_network():
    exposed = HostPolicy(ServerConfig(listen=["0.0.0.0"], allowed_hosts=["gpu-box.lan"]))
    assert exposed.allows("192.168.1.9") and exposed.allows("gpu-box.lan") and exposed.allows("localhost")
    assert not exposed.allows("evil.example")
    local = HostPolicy(ServerConfig())
    assert not local.allows("192.168.1.9") and local.allows("127.0.0.2")


async def test_auth_token_guards_every_route(aiohttp_client, base):
    client = await make_client(aiohttp_client, base, auth_token="s3cret")
    for method, path in (("GET", "/object_info"), ("GET", "/"), ("POST", "/prompt"), ("GET", "/view?filename=ok.png"),
                         ("GET", "/api/history"), ("POST", "/upload/image")):
        response = await client.request(method, path)
        assert response.status == 401, path
        assert (await response.json())["error"]["type"] == "unauthorized"
    assert (await client.get("/object_info", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/object_info", headers={"Authorization": "Bearer s3cret"})).status == 200
    assert (await client.get("/view", params={"filename": "ok.png", "token": "s3cret"})).status == 200
    client.session.cookie_jar.clear()
    with pytest.raises(Exception):
        await client.ws_connect("/ws")
    ws = await client.ws_connect("/ws?token=s3cret")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_token_in_the_page_url_lets_the_editor_load_its_files(aiohttp_client, base):
    client = await make_client(aiohttp_client, base, auth_token="s3cret")
    client.session.cookie_jar.clear()
    assert (await client.get("/object_info")).status == 401
    page = await client.get("/?token=s3cret")
    assert page.status == 200
    cookie = page.cookies["fluxgraph_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert (await client.get("/object_info", cookies={"fluxgraph_token": "s3cret"})).status == 200
    assert (await client.get("/object_info", cookies={"fluxgraph_token": "wrong"})).status == 401


async def test_cors_headers_only_when_enabled(aiohttp_client, base, tmp_path):
    plain = await make_client(aiohttp_client, base)
    response = await plain.get("/object_info")
    assert "Access-Control-Allow-Origin" not in response.headers
    other = tmp_path / "other"
    other.mkdir()
    cors = await make_client(aiohttp_client, other, cors_origin="https://app.example")
    preflight = await cors.options("/prompt", headers={"Origin": "https://app.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = await cors.post("/prompt", json={"prompt": image_graph()}, headers={"Origin": "https://app.example"})
    assert allowed.status == 200 and allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    refused = await cors.post("/prompt", json={"prompt": image_graph()}, headers={"Origin": "https://evil.example"})
    assert refused.status == 403
    null = await cors.post("/prompt", json={"prompt": image_graph()}, headers={"Origin": "null"})
    assert null.status == 403
