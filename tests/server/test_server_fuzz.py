"""Property-based tests: malformed prompts and request bodies always get a 4xx with a specific message.

More than 500 generated requests (see the max_examples below) go to a real server on a local port; none may
answer 500 (or 2xx), every error body names its type and says what is wrong, and the server still runs a
valid prompt afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from typing import Any

import pytest
from aiohttp import web
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    (base / "output").mkdir()
    live = LiveServer(create_app(make_runtime(base), make_config(base)))
    yield live
    live.close()


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


@settings(max_examples=40, **SETTINGS)
@given(params=st.dictionaries(st.sampled_from(["max_items", "offset"]),
                              st.text(alphabet="-x1.e ", min_size=1, max_size=4).filter(
                                  lambda s: not s.strip().lstrip("-").isdigit()), min_size=1))
def test_bad_history_queries_get_a_specific_400(server, params):
    from urllib.parse import urlencode

    status, body = server.request("GET", "/history?" + urlencode(params))
    assert_specific_4xx(status, body)


def test_server_keeps_serving_after_the_fuzzing(server):
    status, body = server.request("POST", "/prompt", json.dumps({"prompt": image_graph("afterfuzz")}).encode())
    assert status == 200, body
    wait_until(lambda: server.request("GET", f"/api/jobs/{body['prompt_id']}")[1]["status"] == "success",
               what="the prompt queued after the fuzzing to succeed")
    assert server.request("GET", "/object_info/EmptyImage")[0] == 200
