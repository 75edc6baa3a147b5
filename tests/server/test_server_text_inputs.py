"""STRING literals are capped in length, and file-name strings hold no control or bidi characters (issue 18):
refused at validation in ComfyUI's node_errors shape, naming node and input; a linked filename_prefix is
refused by SaveImage when it runs."""

from __future__ import annotations

import json

import pytest

from engine.core.text_inputs import DEFAULT_MAX_LINE, DEFAULT_MAX_TEXT
from tests.support.server import image_graph, wait_for_job

pytestmark = pytest.mark.asyncio


def text_graph(text: str, node: str = "PrimitiveStringMultiline") -> dict:
    graph = image_graph()
    graph["3"] = {"class_type": node, "inputs": {"value": text}}
    graph["2"]["inputs"]["filename_prefix"] = ["3", 0]
    return graph


async def refused(client, graph: dict, node_id: str) -> dict:
    response = await client.post("/prompt", json={"prompt": graph})
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"][node_id]["errors"]
    assert set(error) == {"type", "message", "details", "extra_info"}
    assert (await client.get("/queue")).status == 200
    return {**error, "class_type": body["node_errors"][node_id]["class_type"]}


@pytest.mark.parametrize("prefix", ["shot\r\nSet-Cookie: x", "a\nb", "tab\there", "bell\x07", "invoice\u202egnp",
                                    "rtl\u2067x", "del\x7f"])  # NUL: refused as unsafe_path (security tests)
async def test_control_characters_in_filename_prefix_are_refused(client, tmp_path, prefix):
    error = await refused(client, image_graph(prefix), "2")
    assert error["class_type"] == "SaveImage" and error["type"] == "invalid_filename"
    assert error["extra_info"]["input_name"] == "filename_prefix"
    assert "filename_prefix" in error["message"] and "U+" in error["details"]
    assert not list((tmp_path / "output").rglob("*.png"))


async def test_a_linked_filename_prefix_with_a_line_break_fails_when_saving(client, tmp_path):
    response = await client.post("/prompt", json={"prompt": text_graph("a\nb", "PrimitiveString")})
    assert response.status == 200, await response.json()
    prompt_id = (await response.json())["prompt_id"]
    job = await wait_for_job(client, prompt_id)
    assert job["status"] == "failed"
    history = json.dumps(await (await client.get(f"/history/{prompt_id}")).json())
    assert "filename_prefix" in history and "control" in history
    assert not list((tmp_path / "output").rglob("*.png"))


async def test_plain_unicode_prefixes_still_save(client):
    prefix = "caf\u00e9/\u732b \u0645\u0631\u062d\u0628\u0627"  # accents, CJK, Arabic: not controls
    response = await client.post("/prompt", json={"prompt": image_graph(prefix)})
    assert response.status == 200, await response.json()
    assert (await wait_for_job(client, (await response.json())["prompt_id"]))["status"] == "completed"


async def test_multiline_text_over_the_default_cap_is_refused(client):
    error = await refused(client, text_graph("x" * (DEFAULT_MAX_TEXT + 1)), "3")
    assert error["class_type"] == "PrimitiveStringMultiline" and error["type"] == "value_too_long"
    assert error["extra_info"]["input_name"] == "value"
    assert error["extra_info"]["received_length"] == DEFAULT_MAX_TEXT + 1
    assert error["extra_info"]["max_length"] == DEFAULT_MAX_TEXT
    assert "received_value" not in error["extra_info"]  # the text is not echoed back
    assert "FLUXGRAPH_MAX_TEXT_LENGTH" in error["details"]


async def test_single_line_text_has_its_own_cap(client):
    error = await refused(client, image_graph("p" * (DEFAULT_MAX_LINE + 1)), "2")
    assert error["type"] == "value_too_long" and error["extra_info"]["input_name"] == "filename_prefix"
    assert "FLUXGRAPH_MAX_LINE_LENGTH" in error["details"]


async def test_the_caps_come_from_the_environment(client, monkeypatch):
    monkeypatch.setenv("FLUXGRAPH_MAX_TEXT_LENGTH", "10")
    error = await refused(client, text_graph("y" * 11), "3")
    assert error["extra_info"]["max_length"] == 10
    ok = await client.post("/prompt", json={"prompt": text_graph("y" * 10)})
    assert ok.status == 200, await ok.json()
    monkeypatch.setenv("FLUXGRAPH_MAX_LINE_LENGTH", "5")
    error = await refused(client, image_graph("abcdef"), "2")
    assert error["extra_info"]["max_length"] == 5
    monkeypatch.setenv("FLUXGRAPH_MAX_LINE_LENGTH", "nonsense")  # ignored (logged): the default applies
    assert (await client.post("/prompt", json={"prompt": image_graph("abcdef")})).status == 200


async def test_a_prompt_body_over_the_request_limit_gets_a_413(aiohttp_client, tmp_path):
    from engine.server.app import create_app
    from tests.support.server import make_config, make_runtime

    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path, max_upload_bytes=1000)))
    body = json.dumps({"prompt": text_graph("z" * (2 * 1024 * 1024))}).encode()
    response = await client.post("/prompt", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert (await response.json())["error"]["message"] == "Request body too large"
    assert (await client.get("/queue")).status == 200
