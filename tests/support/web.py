"""Helpers for the editor tests (no tests here): a live fluxgraph server in a thread, Chromium through
Playwright, a slow test node that reports progress, and the editor's widget mapping mirrored in Python.

The browser tests drive Debian's Chromium (`/usr/bin/chromium`, installed by tests/browser_setup.sh); they
skip only when it is absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from engine.backends.runtime import Runtime
from engine.core.registry import NodeRegistry
from engine.core.schema import Float, Int, Output, Socket, node
from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.zoo import writer as zoo

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = PROJECT_ROOT / "web"
WORKFLOWS_DIR = PROJECT_ROOT / "workflows"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-gpu"]
ARTIFACTS_DIR = PROJECT_ROOT / "tests" / "artifacts"
CHROMIUM_MISSING = f"Debian's Chromium is not installed at {CHROMIUM} (tests/browser_setup.sh installs it)"

# ---------------------------------------------------------------------------------------------- test nodes


@node("WebTestSteps", inputs=[Socket("image", "IMAGE"), Int("steps", 4, min=1, max=100),
                              Float("seconds_per_step", 0.05, min=0.0, max=5.0, step=0.01)],
      outputs=[Output("IMAGE")], category="testing", display_name="Slow Steps (test)")
def web_test_steps(ctx, image, steps, seconds_per_step):
    """Passes the image through, reporting `steps` progress steps with the image as a live preview: the
    editor's progress bar and preview have work to show."""
    for step in range(steps):
        time.sleep(seconds_per_step)
        ctx.progress(step + 1, steps, image)
    return (image,)


@node("WebTestFail", inputs=[Socket("image", "IMAGE")], outputs=[Output("IMAGE")], category="testing",
      display_name="Fail (test)")
def web_test_fail(ctx, image):
    raise ValueError("WebTestFail always fails")


def editor_registry() -> NodeRegistry:
    """Every installed node pack plus the test nodes."""
    registry = NodeRegistry().discover("nodes")
    registry.register(web_test_steps)
    registry.register(web_test_fail)
    return registry


def tiny_zoo_models_dir() -> Path:
    """The tiny FLUX zoo (engine.zoo.writer), written once per version of the code that makes it.

    Writing it takes ~20 s on two cores, so it is kept in the system's temporary folder under a name that
    hashes engine/models/*.py: a change to the zoo's code writes a fresh one.
    """
    digest = hashlib.sha256()
    sources = [*(PROJECT_ROOT / "engine" / "models").rglob("*.py"), *(PROJECT_ROOT / "engine" / "zoo").rglob("*.py")]
    for source in sorted(sources):
        digest.update(source.name.encode() + source.read_bytes())
    target = Path(tempfile.gettempdir()) / f"fluxgraph-test-zoo-{digest.hexdigest()[:16]}"
    if zoo.zoo_is_complete(target):
        return target
    staging = Path(tempfile.mkdtemp(prefix="fluxgraph-test-zoo-writing-"))
    zoo.write_tiny_zoo(staging)
    try:
        os.rename(staging, target)  # atomic: a parallel run sees the whole zoo or none
    except OSError:  # another run finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- live server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """The real aiohttp app (engine.server.app.create_app) served from a background thread.

    Stopping and starting again on the same port and base folder is a server restart: the SQLite queue and
    history survive, and the editor's websocket reconnects by itself.
    """

    def __init__(self, base_dir: Path, registry_factory: Callable[[], NodeRegistry] = editor_registry,
                 port: int | None = None, workflows_dir: Path = WORKFLOWS_DIR, models_dir: Path | None = None,
                 frontend_dir: Path | None = None) -> None:
        """`frontend_dir`: a frontend served at / instead of the builtin editor (ComfyUI's official one)."""
        self.base_dir = base_dir
        self.frontend_dir = frontend_dir
        self.models_dir = models_dir
        self.registry_factory = registry_factory
        self.port = port or free_port()
        self.workflows_dir = workflows_dir
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "LiveServer":
        started = threading.Event()
        failure: list[BaseException] = []
        self._stopped.clear()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                runtime = Runtime.create(base_dir=self.base_dir, registry=self.registry_factory(), models=None,
                                         models_dir=str(self.models_dir) if self.models_dir else None)
                config = ServerConfig(port=self.port, web_dir=WEB_DIR, workflows_dir=self.workflows_dir,
                                      frontend_dir=self.frontend_dir)
                runner = web.AppRunner(create_app(runtime, config), handle_signals=False)
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            except BaseException as exc:  # noqa: BLE001 - reported to the thread that called start()
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._stopped.set()

        self._thread = threading.Thread(target=run, name=f"fluxgraph-server-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if failure:
            raise RuntimeError(f"the server failed to start: {failure[0]!r}") from failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = None
        self._thread = None


class ServerProcess:
    """`python -m engine.server` as a child process (with the test nodes as an extra node package), for tests
    that kill it with SIGKILL mid-run: the restarted server resumes the prompt that was running."""

    PACK = "from tests.support.web import web_test_fail, web_test_steps\n\nNODES = [web_test_steps, web_test_fail]\n"

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = base_dir
        self.port = port or free_port()
        self.process: Any = None
        packs = base_dir / "packs" / "webtestnodes"
        (packs / "steps").mkdir(parents=True, exist_ok=True)
        (packs / "__init__.py").write_text("")
        (packs / "steps" / "__init__.py").write_text(self.PACK)
        self.packs_dir = base_dir / "packs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        env = {**os.environ, "PYTHONPATH": f"{self.packs_dir}{os.pathsep}{PROJECT_ROOT}",
               "FLUXGRAPH_EXTRA_NODE_PACKAGES": "webtestnodes", "HF_HUB_OFFLINE": "1"}
        log = open(self.base_dir / f"server-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - the child writes it
        self.process = subprocess.Popen([sys.executable, "-m", "engine.server", "--port", str(self.port),
                                         "--base-dir", str(self.base_dir), "--front-end", "builtin"],
                                        cwd=PROJECT_ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"{self.url}/api/prompt", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"the server did not answer within {timeout} s; see {log.name}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:  # noqa: BLE001 - it must go, one way or the other
                self.kill()


# ---------------------------------------------------------------------------------------------- the page


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def open_editor(page: Any, url: str, timeout_ms: int = 15_000, blank: bool = True) -> None:
    """Open the editor; `blank` skips the default workflow a first visit gets."""
    if blank:
        url += ("&" if "?" in url else "?") + "blank=1"
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']", timeout=timeout_ms)
    page.wait_for_function("document.getElementById('connection').textContent === 'connected'", timeout=timeout_ms)


def node_selector(node_id: int) -> str:
    return f".node[data-node-id='{node_id}']"


def input_socket(node_id: int, name: str) -> str:
    return f"{node_selector(node_id)} .socket-in[data-input='{name}']"


def output_socket(node_id: int, slot: int) -> str:
    return f"{node_selector(node_id)} .socket-out[data-slot='{slot}']"


def widget(node_id: int, name: str) -> str:
    return f"{node_selector(node_id)} [name='{name}']"


def centre(page: Any, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not visible"
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def drag(page: Any, from_selector: str, to_selector: str) -> None:
    """A real pointer drag (down, several moves, up), as a user draws a link or moves a node."""
    x0, y0 = centre(page, from_selector)
    x1, y1 = centre(page, to_selector)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def add_node_by_search(page: Any, query: str, node_type: str, at: tuple[float, float]) -> int:
    """Double-clicks the canvas at `at`, types `query` and picks `node_type`; returns the new node's id."""
    before = set(node_ids(page))
    page.mouse.dblclick(*at)
    page.wait_for_selector(".search-menu:not([hidden]) .search-input")
    page.keyboard.type(query)
    page.click(f".search-menu .search-item[data-type='{node_type}']")
    page.wait_for_function(f"document.querySelectorAll('.node').length === {len(before) + 1}")
    (added,) = set(node_ids(page)) - before
    return added


def watch_node(page: Any, node_id: int) -> None:
    """Records every change of a node's run state (executing, progress "value/max", cached) in the page, so
    a test sees states that last only milliseconds (a tiny model samples a step in a few ms)."""
    page.evaluate("""(id) => {
        const node = document.querySelector(`.node[data-node-id='${id}']`);
        const log = (window.__nodeStates = window.__nodeStates || {})[id] = [];
        const snapshot = () => {
            const bar = node.querySelector('.node-progress');
            log.push({ executing: node.classList.contains('node-executing'),
                       cached: node.classList.contains('node-cached'),
                       progress: bar && bar.classList.contains('active') ? bar.dataset.value : null });
        };
        new MutationObserver(snapshot).observe(node, { attributes: true, subtree: true,
                                                       attributeFilter: ['class', 'data-value'] });
    }""", node_id)


def node_states(page: Any, node_id: int) -> list[dict[str, Any]]:
    return page.evaluate("(id) => window.__nodeStates[id]", node_id)


def node_ids(page: Any) -> list[int]:
    return [int(v) for v in page.eval_on_selector_all(".node", "els => els.map(e => e.dataset.nodeId)")]


def link_count(page: Any) -> int:
    return page.evaluate("window.fluxgraph.graph.links.size")


def current_prompt(page: Any) -> dict[str, Any]:
    """The API prompt the editor would queue now (without seed randomisation side effects)."""
    return page.evaluate("""async () => {
        const { graphToPrompt } = await import('/js/api_prompt.js');
        return graphToPrompt(window.fluxgraph.graph);
    }""")


def saved_workflow(page: Any) -> dict[str, Any]:
    return page.evaluate("""async () => {
        const { serializeWorkflow } = await import('/js/ui_format.js');
        return serializeWorkflow(window.fluxgraph.graph, { viewport: window.fluxgraph.canvas.viewport });
    }""")


def load_workflow(page: Any, workflow: dict[str, Any], name: str = "test.json") -> None:
    assert page.evaluate("([wf, name]) => window.fluxgraph.load(wf, name)", [workflow, name])


def drop_file(page: Any, data: bytes, name: str, mime: str, target: str = "#canvas") -> None:
    """Drops a file on the canvas the way a drag from the desktop does (a DataTransfer with one File)."""
    transfer = page.evaluate_handle("""([bytes, name, mime]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
        return transfer;
    }""", [list(data), name, mime])
    page.dispatch_event(target, "drop", {"dataTransfer": transfer})


def screenshot(page: Any, name: str) -> Path:
    """Saves a screenshot under tests/artifacts/ for people to look at (never compared)."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# ---------------------------------------------------------------------------------------------- widget mapping

PRIMITIVE_WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")
LEGACY_SEED_NAMES = ("seed", "noise_seed")


def editor_input_kind(spec: list[Any]) -> dict[str, Any]:
    """How the editor (web/js/node_defs.js) draws one `/object_info` input spec, mirrored in Python.

    Returns {"widget": "INT"|"FLOAT"|"STRING"|"BOOLEAN"|"COMBO"|None, "socket": type name,
    "control": bool, "upload": bool, "choices": list | None}.
    """
    head = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    choices = None
    if isinstance(head, list):
        choices, socket_type = head, "COMBO"
    elif head == "COMBO":
        choices, socket_type = list(options.get("options", [])), "COMBO"
    else:
        socket_type = str(head)
    widget_kind = None
    if not options.get("forceInput"):
        widget_kind = "COMBO" if choices is not None else (socket_type if socket_type in PRIMITIVE_WIDGETS else None)
    return {"widget": widget_kind, "socket": socket_type, "choices": choices,
            "control": widget_kind == "INT" and options.get("control_after_generate") is True,
            "upload": widget_kind == "COMBO" and options.get("image_upload") is True,
            "options": options}


def editor_node_layout(info: dict[str, Any]) -> dict[str, Any]:
    """Sockets, widgets and the widgets_values length the editor gives one node of `/object_info`."""
    sockets, widgets, length = [], [], 0
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in info.get("input_order", {}).get(group, list(specs)):
            kind = editor_input_kind(specs[name])
            if kind["widget"] is None:
                sockets.append(name)
            else:
                widgets.append(name)
                length += 1 + int(kind["control"]) + int(kind["upload"])
    return {"sockets": sockets, "widgets": widgets, "widgets_values_length": length,
            "outputs": len(info.get("output", []))}


NO_EXTERNAL_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
ALLOWED_URLS = ("http://www.w3.org/2000/svg",)
