"""Hostile input that once answered 500 or broke the socket (issue 18): each gets a specific 4xx (or a proper
websocket close) and the server keeps serving."""

from __future__ import annotations

import io
import os

import pytest
import pytest_asyncio
from aiohttp import FormData, WSMsgType
from PIL import Image

from engine.server.app import create_app
from tests.support.server import make_config, make_runtime

pytestmark = pytest.mark.asyncio


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_form(filename="up.png", **fields) -> FormData:
    form = FormData()
    form.add_field("image", png_bytes(), filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


def raw_multipart(filename: bytes, data: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose file name bytes are sent exactly as given (FormData would escape them)."""
    boundary = b"fluxgraphboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="' + filename +
            b'"\r\nContent-Type: image/png\r\n\r\n' + (png_bytes() if data is None else data) + b"\r\n--" +
            boundary + b"--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


@pytest.fixture
def base(tmp_path):
    for sub in ("input", "output", "temp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "output" / "ok.png").write_bytes(png_bytes())
    return tmp_path


@pytest_asyncio.fixture
async def client(aiohttp_client, base):
    return await aiohttp_client(create_app(make_runtime(base), make_config(base)))


async def assert_4xx(response, status: int, words: str = "") -> dict:
    body = await response.json()
    assert response.status == status, body
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}, body
    assert words in body["error"]["message"] + " " + body["error"]["details"], body
    return body


async def assert_still_serving(client) -> None:
    response = await client.get("/view", params={"filename": "ok.png"})
    assert response.status == 200 and await response.read() == png_bytes()


# ----------------------------------------------------------------------------- integer query parameters
@pytest.mark.parametrize("path, query", [
    ("/history", "max_items=99999999999999999999"),
    ("/api/history", "max_items=99999999999999999999&offset=99999999999999999999"),
    ("/history", "offset=-99999999999999999999"),
])
async def test_huge_integer_query_parameters_get_a_400(client, path, query):
    await assert_4xx(await client.get(f"{path}?{query}"), 400, "Query parameter")
    await assert_still_serving(client)


# ----------------------------------------------------------------------------- uploads
@pytest.mark.parametrize("subfolder, words", [
    ("a" * 300, "longer than"),
    ("/".join(["b" * 200] * 25), "longer than"),
    ("/".join(["c"] * 2100), "levels"),
])
async def test_upload_subfolders_too_long_or_deep_get_a_400(client, base, subfolder, words):
    await assert_4xx(await client.post("/upload/image", data=upload_form(subfolder=subfolder)), 400, words)
    assert not any((base / "input").iterdir())
    await assert_still_serving(client)


async def test_a_60_mb_junk_multipart_body_gets_a_4xx(client):
    junk = os.urandom(1024) * (60 * 1024)
    response = await client.post("/upload/image", data=junk,
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status in (400, 413)
    await assert_4xx(response, response.status)
    await assert_still_serving(client)


@pytest.mark.parametrize("filename, words", [
    (b"a\x00b.png", "NUL"),  # aiohttp refuses the header itself
    (b"caf\xe9\xff.png", "UTF-8"),
])
async def test_upload_names_with_nul_or_invalid_utf8_get_a_400(client, base, filename, words):
    body, headers = raw_multipart(filename)
    await assert_4xx(await client.post("/upload/image", data=body, headers=headers), 400, words)
    assert not any((base / "input").iterdir())
    await assert_still_serving(client)


@pytest.mark.parametrize("character", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067",
                                       "\u2068", "\u2069", "\u200e", "\u200f"])
async def test_bidi_controls_in_upload_names_are_replaced(client, base, character):
    response = await client.post("/upload/image", data=upload_form(f"invoice{character}gnp.png"))
    assert response.status == 200
    name = (await response.json())["name"]
    assert name == "invoice_gnp.png" and (base / "input" / name).is_file()


async def test_bidi_controls_in_upload_subfolders_are_refused(client, base):
    await assert_4xx(await client.post("/upload/image", data=upload_form(subfolder="x\u202egnp")), 400,
                     "control")


# ----------------------------------------------------------------------------- /view
async def test_view_through_a_symlink_loop_gets_a_4xx(client, base):
    os.symlink(base / "output" / "loop_b", base / "output" / "loop_a")
    os.symlink(base / "output" / "loop_a", base / "output" / "loop_b")
    for params in ({"filename": "loop_a"}, {"filename": "x.png", "subfolder": "loop_a"}):
        response = await client.get("/view", params=params)
        assert response.status in (400, 403, 404)
        await assert_4xx(response, response.status)
    await assert_still_serving(client)


@pytest.mark.parametrize("params", [
    {"filename": "a" * 300 + ".png"},
    {"filename": "ok.png", "subfolder": "s" * 300},
    {"filename": "ok.png", "subfolder": "/".join(["d" * 200] * 25)},
])
async def test_view_with_overlong_names_gets_a_400(client, params):
    await assert_4xx(await client.get("/view", params=params), 400, "longer than")
    await assert_still_serving(client)


# ----------------------------------------------------------------------------- websocket
async def test_a_deeply_nested_first_websocket_message_closes_the_socket_cleanly(client):
    ws = await client.ws_connect("/ws?clientId=deep")
    assert (await ws.receive_json())["type"] == "status"
    await ws.send_str("[" * 500_000)
    message = await ws.receive()
    while message.type == WSMsgType.TEXT:
        message = await ws.receive()
    assert message.type == WSMsgType.CLOSE and message.data == 1009, message
    await ws.close()
    await assert_still_serving(client)
    again = await client.ws_connect("/ws?clientId=after")
    assert (await again.receive_json())["type"] == "status"
    await again.close()


async def test_brackets_inside_strings_do_not_count_as_nesting(client):
    ws = await client.ws_connect("/ws?clientId=flags")
    assert (await ws.receive_json())["type"] == "status"
    await ws.send_json({"type": "feature_flags", "data": {"note": "[{" * 1000 + '\\"' + "[" * 100}})
    assert (await ws.receive_json())["type"] == "feature_flags"
    await ws.close()
