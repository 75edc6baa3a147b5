"""ComfyUI's official frontend (PyPI `comfyui-frontend-package`, the optional `frontend` extra) served by
fluxgraph: `--front-end` / `--front-end-root` parsing and static serving without a browser, then Playwright
tests in Debian's Chromium against the real frontend on a live server (no proxy, nothing from the network).

Screenshots are written to tests/artifacts/ for people to look at; nothing compares pixels.
"""

from __future__ import annotations

import argparse
import importlib.util
import re

import pytest

from engine.server import add_serve_arguments, build_config, frontends
from engine.server.app import create_app
from tests.support.page_watch import BOOTED, PageWatch
from tests.support.server import make_config, make_runtime

OFFICIAL_DIR = frontends.official_frontend_dir()
NEEDS_OFFICIAL = pytest.mark.skipif(OFFICIAL_DIR is None, reason="comfyui-frontend-package is not installed "
                                                                  "(pip install -e '.[frontend]'; make test does)")


def _config(*argv: str):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return build_config(parser.parse_args(list(argv)))


def _fake_frontend(folder):
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>official</title>")
    (folder / "assets" / "app.js").write_text("export const x = 1;")
    (folder / "assets" / "app.css").write_text("body{}")
    return folder


# ------------------------------------------------------------------------------------ flags


def test_default_front_end_is_the_official_one_when_installed(monkeypatch, tmp_path):
    official = _fake_frontend(tmp_path / "static")
    monkeypatch.setattr(frontends, "official_frontend_dir", lambda: official)
    assert _config().frontend_dir == official
    assert _config("--front-end", "comfyui").frontend_dir == official
    assert _config("--front-end", "builtin").frontend_dir is None


def test_default_front_end_is_builtin_without_the_package(monkeypatch):
    monkeypatch.setattr(frontends, "official_frontend_dir", lambda: None)
    assert _config().frontend_dir is None
    with pytest.raises(SystemExit, match=r"fluxgraph\[frontend\]"):
        _config("--front-end", "comfyui")


def test_front_end_root_serves_that_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(frontends, "official_frontend_dir", lambda: None)
    root = _fake_frontend(tmp_path / "dist")
    assert _config("--front-end-root", str(root)).frontend_dir == root.resolve()
    assert _config("--front-end", "comfyui", "--front-end-root", str(root)).frontend_dir == root.resolve()
    with pytest.raises(SystemExit, match="no index.html"):
        _config("--front-end-root", str(tmp_path))
    with pytest.raises(SystemExit, match="cannot be combined"):
        _config("--front-end", "builtin", "--front-end-root", str(root))
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(SystemExit):  # argparse's own refusal of an unknown choice
        parser.parse_args(["--front-end", "vue"])


def test_installed_package_is_found_by_importlib():
    """The package is located through importlib (never a copy in the repository): its static folder, when the
    package is installed, holds the built index.html."""
    import importlib.util

    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None:
        assert OFFICIAL_DIR is None
    else:
        assert OFFICIAL_DIR is not None and (OFFICIAL_DIR / "index.html").is_file()
        assert OFFICIAL_DIR.name == "static" and str(OFFICIAL_DIR).startswith(spec.submodule_search_locations[0])


# ------------------------------------------------------------------------------------ static serving


@pytest.mark.asyncio
async def test_official_at_root_builtin_at_fixed_path(aiohttp_client, tmp_path):
    official = _fake_frontend(tmp_path / "static")
    config = make_config(tmp_path, frontend_dir=official)
    (config.web_dir / "style.css").write_text("/* builtin */")
    client = await aiohttp_client(create_app(make_runtime(tmp_path), config))
    root = await client.get("/")
    assert root.status == 200 and "official" in await root.text()
    assert root.headers["Cache-Control"] == "no-cache"
    script = await client.get("/assets/app.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert (await client.get("/assets/app.css")).content_type == "text/css"
    builtin = await client.get("/fluxgraph/editor/")
    assert builtin.status == 200 and "editor" in await builtin.text()
    assert (await (await client.get("/fluxgraph/editor/style.css")).text()) == "/* builtin */"
    moved = await client.get("/fluxgraph/editor?blank=1", allow_redirects=False)
    assert moved.status == 308 and moved.headers["Location"] == "/fluxgraph/editor/?blank=1"
    api = await client.get("/object_info")  # API routes win over the catch-all
    assert api.status == 200 and api.content_type == "application/json"


@pytest.mark.asyncio
async def test_missing_static_files_answer_in_their_own_type(aiohttp_client, tmp_path):
    official = _fake_frontend(tmp_path / "static")
    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path, frontend_dir=official)))
    for path, content_type in (("/assets/gone.css", "text/css"), ("/assets/gone.js", "text/javascript"),
                               ("/fluxgraph/editor/gone.js", "text/javascript")):
        answer = await client.get(path)
        assert (answer.status, answer.content_type) == (404, content_type), path
        assert "not found" in await answer.text()
    other = await client.get("/assets/gone.png")
    assert other.status == 404 and (await other.json())["error"]["type"] == "not_found"
    escape = await client.get("/assets/%2e%2e/%2e%2e/secret.txt")
    assert escape.status == 404


@pytest.mark.asyncio
async def test_builtin_front_end_stays_at_root(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path)))
    assert "editor" in await (await client.get("/")).text()
    assert "editor" in await (await client.get("/fluxgraph/editor/")).text()


@NEEDS_OFFICIAL
@pytest.mark.asyncio
async def test_real_package_index_and_its_assets_are_served(aiohttp_client, tmp_path):
    """Everything the official index.html names directly is served locally with a browser-usable type."""
    import re

    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path, frontend_dir=OFFICIAL_DIR)))
    html = await (await client.get("/")).text()
    assert "<title>ComfyUI</title>" in html
    targets = [t for t in re.findall(r"""(?:href|src)=["']\.?/?([^"':#]+)["']""", html)
               if not t.startswith(("user.css", "api/"))]  # user.css: a route of the server, not a file
    assert any(t.endswith(".js") for t in targets)
    for target in targets:
        answer = await client.get("/" + target)
        assert answer.status == 200, target
        if target.endswith(".js"):
            assert answer.content_type == "text/javascript", target
        if target.endswith(".css"):
            assert answer.content_type == "text/css", target


def test_frontend_extra_is_installed_by_make_run_and_make_test():
    import tomllib

    from tests.support.web import PROJECT_ROOT

    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["frontend"] == ["comfyui-frontend-package>=1.58,<2"]
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert extras["templates"] == ["comfyui-workflow-templates-json>=0.1"]
    assert '".[test,ray,export,frontend,templates,train]"' in makefile  # make test's install: browser tests in CI
    run_rule = next(line for line in makefile.splitlines() if line.startswith("run:"))
    assert "$(VENV)/.installed-frontend" in run_rule and '-e ".[frontend,templates,train]"' in makefile


# ------------------------------------------------------------------------------------ in Chromium
# One server and one browser for the module; each test opens its own page. The official frontend boots in a
# few seconds; waits are on conditions (the app's own state, the DOM), never on fixed sleeps.

@pytest.fixture(scope="module")
def official_server(tmp_path_factory):
    from tests.support.web import CHROMIUM, CHROMIUM_MISSING, LiveServer, tiny_zoo_models_dir

    if OFFICIAL_DIR is None:
        pytest.skip("comfyui-frontend-package is not installed (pip install -e '.[frontend]'; make test does)")
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    base = tmp_path_factory.mktemp("official")
    server = LiveServer(base, models_dir=tiny_zoo_models_dir(), frontend_dir=OFFICIAL_DIR).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(official_server):
    from playwright.sync_api import sync_playwright

    from tests.support.web import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def _open(browser, server, first_visit: bool = False):
    """A page on the official frontend, booted; unless `first_visit`, as a returning user (the tutorial done,
    so the templates browser does not open by itself)."""
    if not first_visit:
        _post_json(server.url + "/api/settings", {"Comfy.TutorialCompleted": True})
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/")
    page.wait_for_function(BOOTED, timeout=60_000)
    return page, watch


def _post_json(url: str, body) -> int:
    import json
    import urllib.request

    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def _load_shipped_workflow(page, name: str = "flux_schnell_txt2img.json") -> None:
    """Drops the shipped workflow file on the canvas, as a user drags it from the desktop."""
    from tests.support.web import WORKFLOWS_DIR, drop_file

    drop_file(page, (WORKFLOWS_DIR / name).read_bytes(), name, "application/json", target="#graph-canvas")
    page.wait_for_function("app.graph.nodes.some(n => n.type === 'SamplerCustomAdvanced')", timeout=20_000)


@pytest.mark.browser
def test_boots_clean_and_lists_our_nodes(browser, official_server):
    import json
    import urllib.request

    page, watch = _open(browser, official_server, first_visit=True)
    try:
        ours = set(json.loads(urllib.request.urlopen(official_server.url + "/api/object_info").read()))
        registered = set(page.evaluate("Object.keys(LiteGraph.registered_node_types)"))
        assert ours <= registered, f"not in the frontend: {sorted(ours - registered)[:10]}"
        overlay = page.locator("[data-testid=dialog-overlay]")
        overlay.wait_for(timeout=20_000)  # a first visit opens the templates browser
        page.keyboard.press("Escape")
        overlay.wait_for(state="hidden", timeout=20_000)
        page.click("[data-testid=node-library-tab-button]")
        search = page.locator("input[placeholder='Search Nodes...']")
        search.fill("FluxGuidance")
        page.get_by_text("FluxGuidance").first.wait_for(timeout=15_000)
        page.evaluate("new Promise(r => requestAnimationFrame(() => r()))")
        assert watch.unexpected() == []
    finally:
        page.close()


@pytest.mark.browser
def test_flux_workflow_runs_and_its_image_shows(browser, official_server):
    from tests.support.web import screenshot

    page, watch = _open(browser, official_server)
    try:
        _load_shipped_workflow(page)
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function("app.nodeOutputs?.['9']?.images?.length > 0", timeout=60_000)
        filename = page.evaluate("app.nodeOutputs['9'].images[0].filename")
        assert filename.startswith("flux_schnell_")
        # the sampler node got live previews (binary frames), the SaveImage node its image once on screen
        assert "13" in page.evaluate("Object.keys(app.nodePreviewImages || {})")
        page.evaluate("app.canvas.centerOnNode(app.graph.getNodeById(9))")  # on screen: the canvas draws it
        page.wait_for_function("(() => { app.canvas.setDirty(true, true); const n = app.graph.getNodeById(9);"
                               " return n.imgs?.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0 })()",
                               timeout=20_000)
        # in the queue / media panel
        page.click("[data-testid=assets-tab-button]")
        page.locator(f"img[src*='filename={filename}']").first.wait_for(timeout=20_000)
        assert watch.binary_frames > 0, "no binary preview frame arrived over the websocket while sampling"
        screenshot(page, "official_flux_schnell_run")
        assert watch.unexpected() == []
    finally:
        page.close()


@pytest.mark.browser
def test_a_workflow_saved_in_the_ui_is_listed_after_a_reload(browser, official_server):
    import json
    import urllib.request

    page, watch = _open(browser, official_server)
    try:
        _load_shipped_workflow(page)
        page.keyboard.press("Control+s")  # the frontend asks for a name, then writes it to /userdata
        name_box = page.get_by_role("dialog").locator("input").first
        name_box.wait_for(timeout=15_000)
        name_box.fill("saved_in_the_ui")
        name_box.press("Enter")
        listing_url = official_server.url + "/api/userdata?dir=workflows"
        from tests.support.waiting import wait_until

        wait_until(lambda: "saved_in_the_ui.json" in json.loads(urllib.request.urlopen(listing_url).read()),
                   what="the saved workflow on the server")
        watch.reload(page)
        page.click("[data-testid=workflows-tab-button]")
        page.get_by_text("saved_in_the_ui").first.wait_for(timeout=15_000)
        assert watch.unexpected() == []
    finally:
        page.close()


@pytest.mark.browser
def test_a_setting_survives_a_server_restart(browser, official_server):
    page, watch = _open(browser, official_server)
    try:
        page.evaluate("app.extensionManager.setting.set('Comfy.Graph.ZoomSpeed', 1.37)")
        page.wait_for_function("fetch('/api/settings').then(r => r.json())"
                               ".then(s => s['Comfy.Graph.ZoomSpeed'] === 1.37)", timeout=15_000)
        official_server.stop()
        official_server.start()  # same port and base folder: a restart
        watch.problems.clear()  # while the server was down the page's polls were refused, as they should be
        watch.reload(page)
        assert page.evaluate("app.extensionManager.setting.get('Comfy.Graph.ZoomSpeed')") == 1.37
        down = ("ERR_CONNECTION_REFUSED", "Failed to fetch", "Network Error")  # requests made while it was down
        assert [p for p in watch.unexpected() if not any(d in p for d in down)] == []
    finally:
        page.close()


@pytest.mark.browser
def test_an_error_on_a_bad_input_is_shown_on_the_node(browser, official_server):
    page, watch = _open(browser, official_server)
    try:
        _load_shipped_workflow(page)
        page.evaluate("app.graph.getNodeById(10).widgets.find(w => w.name === 'unet_name').value = "
                      "'no-such-model.safetensors'")
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function("app.graph.getNodeById(10).has_errors === true", timeout=30_000)
        assert not page.evaluate("app.graph.getNodeById(13).has_errors")
        errors = page.evaluate("JSON.stringify(app.extensionManager?.errors ?? null)")
        overlay = page.locator("[data-testid=error-overlay]")
        overlay.wait_for(timeout=15_000)
        assert "unet_name" in overlay.inner_text() or "no-such-model" in overlay.inner_text() or errors
        # the refused prompt (400 from POST /prompt, with its node_errors) is the only failure
        assert [p for p in watch.unexpected() if "/api/prompt" not in p and "status of 400" not in p
                and "PromptExecutionError" not in p] == []
    finally:
        page.close()


@pytest.mark.browser
def test_a_template_from_the_templates_browser_loads(browser, official_server):

    if not any(importlib.util.find_spec(name) for name in ("comfyui_workflow_templates_json",
                                                           "comfyui_workflow_templates")):
        pytest.skip("no comfyui-workflow-templates package (the optional 'templates' extra) is installed: the "
                    "templates browser is empty")
    page, watch = _open(browser, official_server)
    try:
        page.get_by_role("button", name="Templates").first.click()
        page.locator("[data-testid^=template-workflow-]").first.wait_for(timeout=20_000)
        page.get_by_placeholder(re.compile("search", re.I)).last.fill("flux schnell")
        card = page.locator("[data-testid=template-workflow-flux_schnell]").first  # a FLUX graph, no API nodes
        card.wait_for(timeout=20_000)
        before = page.evaluate("app.graph.nodes.length")
        card.click()
        page.wait_for_function(f"app.graph.nodes.length > 0 && app.graph.nodes.length !== {before}", timeout=20_000)
        # The tiny zoo has no flux1-schnell-fp8 checkpoint: the frontend's missing-models dialog names it (and
        # asks Hugging Face for its size, which fails offline: recorded, not a failure of our server).
        page.get_by_text("flux1-schnell-fp8.safetensors").first.wait_for(timeout=20_000)
        assert watch.unexpected() == []
    finally:
        page.close()
