"""Property-based tests: malformed prompts, request bodies, uploads, /view paths and websocket messages.

About 1,000 generated requests (seeded: `derandomize=True`; see the max_examples below) go to a real server on
a local port; none may answer 5xx, every error body names its type and says what is wrong, no handler logs an
unhandled error, and the server still runs a valid prompt afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import os
import threading
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.server.app import create_app
from tests.support.server import image_graph, make_config, make_runtime
from tests.support.waiting import wait_until

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class LiveServer:
    """The app on 127.0.0.1:<free port>, its loop in a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self._start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw

    def close(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _UnhandledErrors(logging.Handler):
    """Counts what the error middleware logs as a bug (each one answered 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    for sub in ("output", "input", "temp"):
        (base / sub).mkdir()
    os.symlink(base / "output" / "loop_b", base / "output" / "loop_a")  # a symlink loop
    os.symlink(base / "output" / "loop_a", base / "output" / "loop_b")
    errors = _UnhandledErrors()
    logging.getLogger("engine.server").addHandler(errors)
    live = LiveServer(create_app(make_runtime(base), make_config(base)))
    live.base, live.unhandled = base, errors.records
    yield live
    live.close()
    logging.getLogger("engine.server").removeHandler(errors)


def assert_specific_4xx(status: int, body: Any, allowed: tuple[int, ...] = (400,)) -> None:
    assert status in allowed, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert isinstance(error.get("type"), str) and error["type"], body
    assert isinstance(error.get("message"), str) and len(error["message"]) > 5, body
    assert set(error) == {"type", "message", "details", "extra_info"}, body


# ----------------------------------------------------------------------------- strategies
json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
not_an_object = json_values.filter(lambda v: not isinstance(v, dict))
unknown_class = st.text(min_size=1, max_size=30).filter(lambda name: name not in KNOWN_CLASSES)
KNOWN_CLASSES: set[str] = set()


def _set_input(node: str, name: str, value: Any):
    def mutate(graph: dict) -> dict:
        graph[node]["inputs"][name] = value
        return graph
    return mutate


def _mutations() -> st.SearchStrategy:
    """A function that breaks the valid EmptyImage -> SaveImage graph in one specific way."""
    bad_int = (st.text(alphabet="abcxyz", min_size=1, max_size=8) | st.just(None) |
               st.dictionaries(st.text(max_size=3), json_scalars, min_size=1, max_size=2) |
               st.lists(json_scalars, min_size=3, max_size=4) | st.integers(max_value=0) |
               st.integers(min_value=16385, max_value=2**80))
    return st.one_of(
        bad_int.map(lambda v: _set_input("1", "width", v)),
        st.integers(max_value=-1).map(lambda v: _set_input("1", "color", v)),
        st.sampled_from(["width", "height", "batch_size", "color"]).map(
            lambda name: lambda g: (g["1"]["inputs"].pop(name), g)[1]),
        st.text(min_size=1, max_size=10).filter(lambda s: s not in ("1", "2")).map(
            lambda missing: _set_input("2", "images", [missing, 0])),
        st.integers(min_value=1, max_value=2**40).map(lambda slot: _set_input("2", "images", ["1", slot])),
        st.lists(json_scalars, max_size=1).map(lambda v: _set_input("2", "images", v)),
        st.sampled_from(["../x", "../../etc/p", "/abs/p", "a/../../b"]).map(
            lambda p: _set_input("2", "filename_prefix", p)),
        unknown_class.map(lambda name: lambda g: {**g, "2": {**g["2"], "class_type": name}}),
        json_values.map(lambda v: lambda g: {**g, "2": {"inputs": {}, "noclass": v}}),
        (st.integers() | st.none() | st.lists(json_scalars, max_size=2) | st.booleans()).map(
            lambda v: lambda g: {**g, "2": {**g["2"], "class_type": v}}),
        st.just(lambda g: {"1": g["1"]}),  # no output node
        st.just(lambda g: {**g, "1": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
                           "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}),  # cycle
    )


def _envelope_mutations() -> st.SearchStrategy:
    """Break the POST /prompt envelope around a valid graph."""
    graph = image_graph()
    return st.one_of(
        not_an_object.map(lambda v: {"prompt": v}),
        st.dictionaries(st.text(max_size=6).filter(lambda k: k != "prompt"), json_values, max_size=3),
        (st.text(alphabet="abc", min_size=1) | st.lists(json_scalars, max_size=2) | st.dictionaries(
            st.text(max_size=2), json_scalars, min_size=1, max_size=2)).map(
            lambda v: {"prompt": graph, "number": v}),
        (st.integers() | st.lists(json_scalars, max_size=2) | st.booleans()).filter(
            lambda v: not isinstance(v, int) or isinstance(v, bool)).map(
            lambda v: {"prompt": graph, "client_id": v}),
        (st.text(max_size=3) | st.lists(json_scalars, max_size=2) | st.integers() | st.booleans()).map(
            lambda v: {"prompt": graph, "extra_data": v}),
        (st.text(max_size=3) | st.integers() | st.lists(st.none() | st.booleans() | st.floats(allow_nan=False),
                                                         min_size=1, max_size=2)).map(
            lambda v: {"prompt": graph, "partial_execution_targets": v}),
        st.lists(st.text(alphabet="789", min_size=1, max_size=3), max_size=2).map(
            lambda targets: {"prompt": graph, "partial_execution_targets": targets}),  # names no output
        st.sampled_from(["", "x" * 300, "tab\there", "nl\n"]).map(lambda v: {"prompt": graph, "prompt_id": v}),
    )


raw_bodies = st.one_of(
    st.binary(max_size=64).filter(lambda b: not _parses_as_json(b)),
    st.sampled_from([b'{"prompt": NaN}', b'{"prompt": {"1": Infinity}}', b"[" * 5000 + b"]" * 5000,
                     b'{"prompt": ', b"\xff\xfe{}", b"", b"   "]),
)


def _parses_as_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


# ----------------------------------------------------------------------------- properties
@settings(max_examples=250, **SETTINGS)
@given(mutation=_mutations())
def test_malformed_prompts_get_a_specific_400(server, mutation):
    KNOWN_CLASSES.update(["EmptyImage", "SaveImage"])
    graph = mutation(image_graph())
    status, body = server.request("POST", "/prompt", json.dumps({"prompt": graph}).encode())
    assert_specific_4xx(status, body)
    assert isinstance(body.get("node_errors"), dict)
    for entry in body["node_errors"].values():
        assert entry["errors"] and all(e["message"] and e["type"] for e in entry["errors"])


@settings(max_examples=150, **SETTINGS)
@given(body=_envelope_mutations())
def test_malformed_prompt_envelopes_get_a_specific_400(server, body):
    status, answer = server.request("POST", "/api/prompt", json.dumps(body).encode())
    assert_specific_4xx(status, answer)


@settings(max_examples=60, **SETTINGS)
@given(raw=raw_bodies, path=st.sampled_from(["/prompt", "/queue", "/history", "/free", "/api/generate"]))
def test_bodies_that_are_not_json_get_a_specific_400(server, raw, path):
    assume(path != "/free" or raw.strip())  # /free with no body is a valid no-op
    status, body = server.request("POST", path, raw)
    assert_specific_4xx(status, body)


_route_bodies = st.one_of(
    st.tuples(st.just("/queue"), st.one_of(
        st.dictionaries(st.sampled_from(["x", "y"]), json_values, max_size=2),
        (st.text(max_size=2) | st.integers() | st.lists(st.integers(), min_size=1, max_size=2)).map(
            lambda v: {"delete": v}),
        (st.text(max_size=2) | st.integers() | st.none().map(lambda _: [1])).map(lambda v: {"clear": v}))),
    st.tuples(st.just("/history"), st.one_of(
        st.dictionaries(st.sampled_from(["a", "b"]), json_values, max_size=2),
        (st.text(max_size=2) | st.integers() | st.lists(st.none(), min_size=1, max_size=2)).map(
            lambda v: {"delete": v}))),
    st.tuples(st.just("/free"), (st.text(max_size=2) | st.integers() | st.lists(st.booleans(), max_size=1)).flatmap(
        lambda v: st.sampled_from([{"unload_models": v}, {"free_memory": v}]))),
    st.tuples(st.just("/interrupt"), (st.integers() | st.lists(st.text(max_size=2), max_size=2) |
                                      st.booleans()).map(lambda v: {"prompt_id": v})),
    st.tuples(st.just("/api/generate"), st.one_of(
        st.dictionaries(st.sampled_from(["width", "seed"]), json_values, max_size=2),
        (st.integers() | st.just("") | st.just("   ") | st.lists(st.text(), max_size=1)).map(
            lambda v: {"prompt": v}),
        st.tuples(st.sampled_from(["width", "height", "steps", "seed", "batch_size"]),
                  st.text(max_size=3) | st.floats(allow_nan=False) | st.integers(max_value=-1) |
                  st.integers(min_value=2**64)).map(lambda kv: {"prompt": "a cat", kv[0]: kv[1]}),
        (st.floats(min_value=100.5, allow_nan=False) | st.text(max_size=3) | st.booleans()).map(
            lambda v: {"prompt": "a cat", "guidance": v}),
        st.text(min_size=1, max_size=12).map(lambda v: {"prompt": "a cat", "model": "nope-" + v}))),
)


@settings(max_examples=150, **SETTINGS)
@given(case=_route_bodies)
def test_malformed_route_bodies_get_a_specific_400(server, case):
    path, body = case
    status, answer = server.request("POST", path, json.dumps(body).encode())
    assert_specific_4xx(status, answer)


@settings(max_examples=80, **SETTINGS)
@given(filename=st.text(max_size=30), subfolder=st.text(max_size=10),
       file_type=st.sampled_from(["output", "input", "temp", "models", "", "../x"]))
def test_view_never_fails_and_never_escapes(server, filename, subfolder, file_type):
    from urllib.parse import urlencode

    query = urlencode({"filename": filename, "subfolder": subfolder, "type": file_type})
    status, body = server.request("GET", "/view?" + query)
    assert_specific_4xx(status, body, allowed=(400, 403, 404))


@settings(max_examples=60, **SETTINGS)
@given(params=st.dictionaries(st.sampled_from(["max_items", "offset"]), st.one_of(
    st.text(alphabet="-x1.e ", min_size=1, max_size=4).filter(lambda s: not s.strip().lstrip("-").isdigit()),
    st.integers(min_value=2**31, max_value=10**40).map(str), st.integers(max_value=-2).map(str)), min_size=1))
def test_bad_history_queries_get_a_specific_400(server, params):
    from urllib.parse import urlencode

    status, body = server.request("GET", "/history?" + urlencode(params))
    assert_specific_4xx(status, body)


# ----------------------------------------------------------------------------- hostile names, uploads, websocket
_hostile_chars = st.sampled_from(["a", "b", "/", "\\", ".", " ", "\x00", "\r", "\n", "\x7f", "\u202e", "\u2066",
                                  "\u00e9", "\ud800"[:0] + "\u732b", "%", ":", '"'])
_hostile_names = st.one_of(
    st.text(_hostile_chars, max_size=40),
    st.integers(min_value=250, max_value=600).map(lambda n: "n" * n + ".png"),
    st.tuples(st.integers(1, 40), st.integers(100, 260)).map(lambda t: "/".join(["p" * t[1]] * t[0])),
    st.integers(min_value=60, max_value=3000).map(lambda n: "/".join(["d"] * n)),
    st.sampled_from(["loop_a", "loop_a/x.png", "loop_b/loop_a"]),
)


@settings(max_examples=120, **SETTINGS)
@given(filename=_hostile_names, subfolder=_hostile_names | st.just(""),
       file_type=st.sampled_from(["output", "input", "temp"]))
def test_view_with_hostile_names_gets_a_specific_4xx(server, filename, subfolder, file_type):
    from urllib.parse import urlencode

    query = urlencode({"filename": filename, "subfolder": subfolder, "type": file_type})
    status, body = server.request("GET", "/view?" + query)
    if len(query) > 8000:  # over aiohttp's request-line limit (8190 bytes): its HTTP parser answers, plain 400
        assert status == 400
        return
    assert_specific_4xx(status, body, allowed=(400, 403, 404))


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
_name_bytes = st.one_of(
    st.binary(max_size=40).map(lambda b: b + b".png"),
    _hostile_names.map(lambda n: n.encode("utf-8", "surrogatepass") + b".png"),
    st.sampled_from([b"a\x00b.png", b"caf\xe9\xff.png", b"x\r\ny.png", "inv\u202egnp.png".encode(), b"..png"]),
)


@settings(max_examples=150, **SETTINGS)
@given(filename=_name_bytes, subfolder=_hostile_names | st.just(""),
       file_type=st.sampled_from(["input", "temp", "output", "models", ""]),
       data=st.sampled_from([PNG, b"", b"<html>"]) | st.binary(max_size=64))
def test_uploads_with_hostile_names_never_fail(server, filename, subfolder, file_type, data):
    boundary = b"fuzzboundary"
    part = b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
    body = (part % (boundary, b"subfolder", subfolder.encode("utf-8", "surrogatepass")) +
            part % (boundary, b"type", file_type.encode()) +
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="' + filename +
            b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n--" + boundary + b"--\r\n")
    status, answer = server.request("POST", "/upload/image", body,
                                    {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})
    if status == 200:  # then it is a plain, safe name inside the type's folder
        assert data == PNG and file_type in ("input", "temp", "output", ""), answer
        root = (server.base / (file_type or "input")).resolve()
        stored = (root / answer["subfolder"] / answer["name"]).resolve()
        assert stored.is_file() and root in stored.parents
        assert not any(c in answer["name"] for c in "\x00\r\n\u202e\u2066/\\")
    else:
        assert_specific_4xx(status, answer, allowed=(400, 403, 413))


@settings(max_examples=40, **SETTINGS)
@given(junk=st.binary(min_size=1, max_size=2000), boundary=st.sampled_from(["x", "fuzzboundary", "--", "a" * 70]))
def test_junk_multipart_bodies_get_a_specific_4xx(server, junk, boundary):
    status, answer = server.request("POST", "/upload/image", junk,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_specific_4xx(status, answer, allowed=(400, 413))


async def _websocket_first_message(port: int, message: str | bytes) -> int | None:
    """Connect, read the status greeting, send `message`, close; the close code the server agreed to."""
    async with ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws?clientId=fuzz") as ws:
            greeting = await ws.receive(timeout=30)
            assert greeting.type == WSMsgType.TEXT and json.loads(greeting.data)["type"] == "status"
            await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
            await ws.close()
            return ws.close_code


_ws_messages = st.one_of(
    st.integers(min_value=1, max_value=300_000).flatmap(
        lambda n: st.sampled_from(["[" * n, "{\"a\":" * n, "[" * n + "]" * n, '"' + "[" * n])),
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps({"type": "feature_flags", "data": v})),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@settings(max_examples=60, **SETTINGS)
@given(message=_ws_messages)
def test_websocket_first_messages_never_break_the_socket(server, message):
    code = server._call(_websocket_first_message(server.port, message))
    assert code in (1000, 1009), code  # a normal close, or "message too big" for deep nesting


def test_server_keeps_serving_after_the_fuzzing(server):
    assert not server.unhandled, [r.getMessage() for r in server.unhandled][:5]
    status, body = server.request("POST", "/prompt", json.dumps({"prompt": image_graph("afterfuzz")}).encode())
    assert status == 200, body
    wait_until(lambda: server.request("GET", f"/api/jobs/{body['prompt_id']}")[1]["status"] == "completed",
               what="the prompt queued after the fuzzing to succeed")
    assert server.request("GET", "/object_info/EmptyImage")[0] == 200
