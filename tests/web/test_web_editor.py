"""The browser editor (web/): static checks in Python, then Playwright tests in Debian's Chromium against a
live fluxgraph server (core nodes plus a slow test node that reports progress).

Screenshots of the editor are written to tests/artifacts/ for people to look at; nothing compares pixels.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from engine.core.folders import FolderPaths
from engine.core.schema import NodeSchema
from engine.workflow.widgets import has_control_widget, upload_sentinel, widget_inputs
from tests.support.web import (ALLOWED_URLS, NO_EXTERNAL_URL, WEB_DIR, LiveServer,
                               ServerProcess,
                               add_node_by_search, current_prompt, drag, drop_file, editor_input_kind,
                               editor_node_layout, editor_registry, input_socket, link_count,
                               load_workflow, node_selector, open_editor, output_socket, saved_workflow,
                               screenshot, tiny_zoo_models_dir, watch_node, node_states, widget,
                               WORKFLOWS_DIR)
from tests.support.reference import object_info_reference
from tests.support.waiting import wait_until

# ------------------------------------------------------------------------------------ without a browser


def test_editor_files_work_offline():
    """No CDN: every URL in web/ is relative, and every module an ES import names exists."""
    files = [p for p in WEB_DIR.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"index.html", "style.css", "app.js", "graph.js"}
    for path in files:
        text = path.read_text()
        external = [m for m in NO_EXTERNAL_URL.findall(text) if not any(m in url for url in ALLOWED_URLS)]
        assert not external, f"{path.relative_to(WEB_DIR)} loads from outside the server: {external}"
        for target in re.findall(r"""(?:from|import)\s*\(?\s*["'](\.{1,2}/[^"']+)["']""", text):
            assert (path.parent / target).resolve().is_file(), f"{path.name} imports missing {target}"
    html = (WEB_DIR / "index.html").read_text()
    for target in re.findall(r"""(?:href|src)=["']([^"':#]+)["']""", html):
        assert (WEB_DIR / target).is_file(), f"index.html names missing {target}"


def _expected_widget_values_length(schema: NodeSchema) -> int:
    """What engine.workflow.widgets (the converter of saved workflows) expects in a node's widgets_values."""
    return sum(1 + has_control_widget(inp) + (upload_sentinel(inp) is not None) for inp in widget_inputs(schema))


def test_every_registry_node_maps_onto_editor_widgets(tmp_path):
    """Each input of every installed node becomes a widget or a socket the editor can draw, with a default
    it accepts, and the editor writes as many widgets_values as the engine's converter reads back."""
    registry = editor_registry()
    info = registry.object_info(FolderPaths(tmp_path))
    assert len(info) >= 40
    for name, entry in info.items():
        schema = registry.get(name)
        layout = editor_node_layout(entry)
        assert layout["widgets_values_length"] == _expected_widget_values_length(schema), name
        assert set(layout["widgets"]) == {inp.name for inp in widget_inputs(schema)}, name
        for group in ("required", "optional"):
            for input_name, spec in entry["input"].get(group, {}).items():
                kind = editor_input_kind(spec)
                where = f"{name}.{input_name}"
                assert kind["socket"] and isinstance(kind["socket"], str), where
                options = kind["options"]
                if kind["control"] or kind["upload"]:
                    assert kind["widget"] in ("INT", "COMBO"), where
                if kind["widget"] in ("INT", "FLOAT") and "default" in options:
                    low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
                    assert low <= options["default"] <= high, f"{where}: default outside [{low}, {high}]"
                if kind["widget"] == "COMBO" and kind["choices"] and options.get("default") is not None:
                    assert options["default"] in kind["choices"], f"{where}: default not among the choices"


@pytest.mark.parametrize(("node", "sockets", "length"), [
    ("KSampler", ["model", "positive", "negative", "latent_image"], 7),  # seed, control, steps, cfg, 2 combos, denoise
    ("LoadImage", [], 2),  # the file name and the upload button's "image"
    ("CLIPTextEncode", ["clip"], 1),
    ("SamplerCustomAdvanced", ["noise", "guider", "sampler", "sigmas", "latent_image"], 0),
    ("RandomNoise", [], 2),
])
def test_reference_captures_map_like_comfyui(node, sockets, length):
    """The layouts match what ComfyUI's editor saves for the captured /object_info entries (§7.2)."""
    info = object_info_reference()
    layout = editor_node_layout(info[node])
    assert layout["sockets"] == sockets
    assert layout["widgets_values_length"] == length


# ------------------------------------------------------------------------------------ in the browser

browser = pytest.mark.browser


def steps_workflow(width: int = 32, steps: int = 4, seconds: float = 0.05) -> dict:
    """EmptyImage -> Slow Steps (test) -> Save Image, in API format."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 24, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "WebTestSteps", "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "editor_test"}},
    }


def set_widget(page, node_id: int, name: str, value: str) -> None:
    field = page.locator(widget(node_id, name))
    field.fill(value)
    field.press("Tab")  # commit (the change event), as leaving the field does


@browser
def test_every_node_renders_and_saves_what_the_engine_reads(page, server):
    """One node of every installed type: the DOM has the expected sockets and widgets, and the UI workflow
    the editor saves converts (engine.workflow.convert) into exactly the API prompt the editor queues."""
    from engine.workflow.convert import convert_ui_workflow

    registry = editor_registry()
    info = json.loads(urllib.request.urlopen(f"{server.url}/api/object_info").read())
    page.evaluate("""(types) => {
        const g = window.fluxgraph.graph;
        types.forEach((type, i) => g.addNode(type, { pos: [(i % 8) * 260, Math.floor(i / 8) * 320] }));
    }""", sorted(info))
    for node_id, name in enumerate(sorted(info), start=1):
        layout = editor_node_layout(info[name])
        node = page.locator(node_selector(node_id))
        assert node.get_attribute("data-type") == name
        assert node.locator(".node-inputs .slot-row").count() == len(layout["sockets"]), name
        assert node.locator(".widget-row").count() == len(layout["widgets"]), name
        assert node.locator(".socket-out").count() == layout["outputs"], name
    workflow = saved_workflow(page)
    by_type = {entry["type"]: entry for entry in workflow["nodes"]}
    for name, entry in by_type.items():
        assert len(entry["widgets_values"]) == editor_node_layout(info[name])["widgets_values_length"], name
    converted = convert_ui_workflow(workflow, registry, dynamic_prompts=False, fold_primitives=False).prompt
    queued = current_prompt(page)
    assert {k: (v["class_type"], v["inputs"]) for k, v in converted.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in queued.items()}


@browser
def test_search_menu_adds_two_nodes_and_connects_them(page):
    page.mouse.dblclick(300, 300)
    menu = page.locator(".search-menu")
    assert menu.is_visible()
    # Grouped by category: each category once, holding exactly the nodes of that category.
    categories = menu.locator(".search-category").evaluate_all("groups => groups.map(g => g.dataset.category)")
    assert len(categories) == len(set(categories)) and "image" in categories
    placed = menu.locator(".search-item").evaluate_all(
        "items => items.map(i => [i.dataset.type, i.closest('.search-category').dataset.category])")
    info = page.evaluate("Object.fromEntries([...window.fluxgraph.defs.values()].map(d => [d.name, d.category]))")
    assert placed and all(info[node_type] == category for node_type, category in placed)
    page.keyboard.press("Escape")
    assert not menu.is_visible()

    source = add_node_by_search(page, "empty image", "EmptyImage", (200, 200))
    target = add_node_by_search(page, "invert image", "ImageInvert", (600, 260))
    drag(page, output_socket(source, 0), input_socket(target, "image"))
    assert link_count(page) == 1
    assert current_prompt(page)[str(target)]["inputs"]["image"] == [str(source), 0]
    assert page.locator(f"svg.links path.link[data-target='{target}:image']").count() == 1
    # Typing into the search and pressing Enter picks the best match.
    page.mouse.dblclick(300, 600)
    page.keyboard.type("Save Image")
    page.keyboard.press("Enter")
    wait_until(lambda: page.locator(".node[data-type='SaveImage']").count() == 1, what="SaveImage added")


@browser
def test_incompatible_connection_is_refused(page):
    image = add_node_by_search(page, "empty image", "EmptyImage", (200, 200))
    mask = add_node_by_search(page, "invert mask", "InvertMask", (600, 200))
    drag(page, output_socket(image, 0), input_socket(mask, "mask"))
    assert link_count(page) == 0
    toast = page.locator(".toast-error").last
    assert "cannot connect IMAGE to MASK" in toast.inner_text()
    # A widget input only takes its own type: an IMAGE cannot drive EmptyImage's INT width.
    other = add_node_by_search(page, "empty image", "EmptyImage", (600, 500))
    drag(page, output_socket(image, 0), input_socket(other, "width"))
    assert link_count(page) == 0


@browser
def test_queue_shows_progress_and_the_final_image(page, server):
    load_workflow(page, steps_workflow(width=32, steps=6, seconds=0.12), "steps.json")
    set_widget(page, 1, "width", "48")  # change a widget through the UI
    watch_node(page, 2)
    page.click("#queue-button")
    image = page.locator(f"{node_selector(3)} img.node-output-image")
    image.wait_for(timeout=15_000)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 48, what="image loaded")
    assert image.evaluate("img => img.naturalHeight") == 24
    page.wait_for_selector("#status-text.status-success")
    # The slow node was highlighted while it ran, its progress bar moving step by step; now nothing is.
    running = [state["progress"] for state in node_states(page, 2) if state["executing"] and state["progress"]]
    assert running[-1] == "6/6" and len(set(running)) >= 3, running
    assert page.locator(".node-executing").count() == 0
    assert page.locator(f"{node_selector(2)} img.node-live-preview").count() == 1  # binary preview frames
    screenshot(page, "editor_after_run")
    # The same graph again: everything upstream of the output comes from the cache, and is marked so.
    page.click("#queue-button")
    page.wait_for_selector(f"{node_selector(2)}.node-cached", timeout=15_000)
    assert "node-cached" in page.locator(node_selector(1)).get_attribute("class")
    assert page.locator(f"{node_selector(2)} .node-badge").inner_text() == "cached"


@browser
def test_execution_error_is_shown_on_the_failing_node(page):
    workflow = steps_workflow(steps=1, seconds=0.0)
    workflow["2"] = {"class_type": "WebTestFail", "inputs": {"image": ["1", 0]}}
    load_workflow(page, workflow, "fail.json")
    page.click("#queue-button")
    message = page.locator(f"{node_selector(2)} .node-message.node-message-error")
    message.wait_for(timeout=15_000)
    assert "ValueError: WebTestFail always fails" in message.inner_text()
    assert "node-error" in page.locator(node_selector(2)).get_attribute("class")
    assert "Error in Fail (test)" in page.locator("#status-text").inner_text()


@browser
def test_validation_errors_are_shown_on_the_offending_inputs(page):
    workflow = steps_workflow()
    workflow["1"]["inputs"]["width"] = 0  # below EmptyImage's minimum of 1
    load_workflow(page, workflow, "bad.json")
    page.click("#queue-button")
    row = page.locator(f"{node_selector(1)} .widget-row[data-input='width']")
    row.locator(".input-error-text").wait_for()
    assert "input-error" in row.get_attribute("class")
    assert "smaller than min" in row.locator(".input-error-text").inner_text()
    assert "node-error" in page.locator(node_selector(1)).get_attribute("class")
    assert "Prompt refused" in page.locator("#status-text").inner_text()
    # A missing link is reported on the socket row of the input that needs it.
    page.evaluate("window.fluxgraph.graph.disconnectInput(3, 'images')")
    set_widget(page, 1, "width", "8")
    page.click("#queue-button")
    socket_row = page.locator(f"{node_selector(3)} .slot-row[data-input='images']")
    socket_row.locator(".input-error-text").wait_for()
    assert "input-error" in socket_row.get_attribute("class")
    assert "node-error" not in page.locator(node_selector(1)).get_attribute("class")  # fixed, so cleared


@browser
def test_reload_a_workflow_from_a_saved_png(page, server):
    load_workflow(page, steps_workflow(width=40, steps=1, seconds=0.0), "png.json")
    page.click("#queue-button")
    image = page.locator(f"{node_selector(3)} img.node-output-image")
    image.wait_for(timeout=15_000)
    src = image.get_attribute("src")
    png = urllib.request.urlopen(server.url + src).read()
    page.click("#clear-button")
    assert link_count(page) == 0 and page.locator(".node").count() == 0
    drop_file(page, png, "editor_test_00001_.png", "image/png")
    page.wait_for_selector(node_selector(3))
    assert link_count(page) == 2
    assert page.locator(widget(1, "width")).input_value() == "40"
    prompt = current_prompt(page)
    assert prompt["2"]["inputs"] == {"image": ["1", 0], "steps": 1, "seconds_per_step": 0.0}
    assert prompt["3"]["inputs"]["images"] == ["2", 0]


@browser
def test_save_and_open_ui_and_api_formats(page, tmp_path):
    load_workflow(page, steps_workflow(width=24), "roundtrip.json")
    page.evaluate("window.fluxgraph.graph.moveNode(2, [333, 444])")
    before = current_prompt(page)
    with page.expect_download() as saving:
        page.click("#save-button")
    saved = tmp_path / "saved.json"
    saving.value.save_as(saved)
    workflow = json.loads(saved.read_text())
    assert workflow["version"] == 0.4 and len(workflow["nodes"]) == 3 and len(workflow["links"]) == 2
    assert next(n for n in workflow["nodes"] if n["id"] == 2)["pos"] == [333, 444]
    with page.expect_download() as exporting:
        page.click("#export-api-button")
    exported = tmp_path / "api.json"
    exporting.value.save_as(exported)
    assert json.loads(exported.read_text()) == before

    page.click("#clear-button")
    page.set_input_files("#open-file", str(saved))
    page.wait_for_selector(node_selector(3))
    assert current_prompt(page) == before
    assert page.evaluate("window.fluxgraph.graph.nodes.get(2).pos") == [333, 444]
    page.set_input_files("#open-file", str(exported))
    page.wait_for_function("window.fluxgraph.graph.links.size === 2")
    assert current_prompt(page) == before


@browser
def test_copy_paste_delete_and_seed_control(page, server):
    workflow = steps_workflow(width=16, steps=1, seconds=0.0)
    workflow["4"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    load_workflow(page, workflow, "seed.json")
    page.locator(f"{node_selector(4)} select[name='noise_seed-control']").select_option("increment")

    def finished_runs() -> int:
        return len(json.loads(urllib.request.urlopen(f"{server.url}/api/history").read()))

    before = finished_runs()
    page.click("#queue-button")
    wait_until(lambda: page.locator(widget(4, "noise_seed")).input_value() == "6", what="seed incremented")
    wait_until(lambda: finished_runs() > before, what="the queued prompt in the history")  # it runs after the click
    history = json.loads(urllib.request.urlopen(f"{server.url}/api/history?max_items=1").read())
    (entry,) = history.values()
    assert entry["prompt"][2]["4"]["inputs"]["noise_seed"] == 5  # queued with the value shown before

    page.click(f"{node_selector(1)} .node-title-text")
    page.keyboard.press("Control+c")
    page.mouse.move(700, 600)
    page.keyboard.press("Control+v")
    wait_until(lambda: page.locator(".node[data-type='EmptyImage']").count() == 2, what="paste")
    ids = page.eval_on_selector_all(".node[data-type='EmptyImage']", "e => e.map(n => n.dataset.nodeId)")
    pasted = max(int(i) for i in ids)
    assert page.locator(widget(pasted, "width")).input_value() == "16"
    page.keyboard.press("Delete")
    wait_until(lambda: page.locator(".node[data-type='EmptyImage']").count() == 1, what="delete")
    # The right-click menu: bypass the slow node (Save Image then takes the image straight from node 1).
    page.click(f"{node_selector(2)} .node-title-text", button="right")
    page.click(".context-menu .context-item[data-action='bypass']")
    assert "node-bypassed" in page.locator(node_selector(2)).get_attribute("class")
    prompt = current_prompt(page)
    assert "2" not in prompt and prompt["3"]["inputs"]["images"] == ["1", 0]
    page.click(f"{node_selector(2)} .node-title-text", button="right")
    page.click(".context-menu .context-item[data-action='remove']")
    wait_until(lambda: page.locator(node_selector(2)).count() == 0, what="removed")
    assert link_count(page) == 0


@browser
def test_zoom_and_pan(page):
    node = add_node_by_search(page, "empty image", "EmptyImage", (400, 300))
    box = page.locator(node_selector(node)).bounding_box()
    page.mouse.move(400, 300)
    page.mouse.wheel(0, -400)
    wait_until(lambda: page.evaluate("window.fluxgraph.canvas.scale") > 1.5, what="zoom in")
    zoomed = page.locator(node_selector(node)).bounding_box()
    assert zoomed["width"] > box["width"] * 1.5
    page.mouse.move(1000, 700)
    page.mouse.down()
    page.mouse.move(900, 650, steps=3)
    page.mouse.up()
    panned = page.locator(node_selector(node)).bounding_box()
    assert panned["x"] == pytest.approx(zoomed["x"] - 100, abs=1)
    assert panned["y"] == pytest.approx(zoomed["y"] - 50, abs=1)


@browser
def test_upload_an_image_into_load_image(page, server, tmp_path):
    from PIL import Image

    picture = tmp_path / "upload me.png"
    Image.new("RGB", (12, 10), (200, 30, 30)).save(picture)
    node = add_node_by_search(page, "load image", "LoadImage", (300, 250))
    page.set_input_files(f"{node_selector(node)} input.upload-picker", str(picture))
    wait_until(lambda: page.locator(widget(node, "image")).input_value() == "upload me.png", what="upload")
    preview = page.locator(f"{node_selector(node)} img.node-input-image")
    wait_until(lambda: preview.evaluate("img => img.complete && img.naturalWidth") == 12, what="preview")
    assert current_prompt(page)[str(node)]["inputs"]["image"] == "upload me.png"
    # An image dropped on the node is uploaded into it too (not opened as a workflow).
    dropped = tmp_path / "dropped.png"
    Image.new("RGB", (7, 5), (0, 0, 250)).save(dropped)
    drop_file(page, dropped.read_bytes(), "dropped.png", "image/png", target=f"{node_selector(node)} .node-title")
    wait_until(lambda: page.locator(widget(node, "image")).input_value() == "dropped.png", what="drop upload")
    wait_until(lambda: preview.evaluate("img => img.complete && img.naturalWidth") == 7, what="new preview")
    assert page.locator(".node").count() == 1


@browser
def test_interrupt_and_the_queue_panel(page):
    load_workflow(page, steps_workflow(width=8, steps=100, seconds=0.05), "long.json")
    page.click("#panel-button")
    page.click("#queue-button")
    page.wait_for_selector(f"{node_selector(2)}.node-executing", timeout=15_000)
    page.wait_for_selector("#queue-running .queue-item", timeout=5_000)
    page.click("#interrupt-button")
    page.wait_for_selector("#status-text.status-warning:has-text('Interrupted')", timeout=10_000)
    page.wait_for_selector("#history-list .history-item.history-interrupted", timeout=5_000)
    assert page.locator(".node-executing").count() == 0
    assert page.locator("#queue-running .queue-item").count() == 0


@browser
def test_after_a_server_crash_the_editor_reconnects_and_follows_the_resumed_job(chromium, tmp_path):
    """The server is killed (SIGKILL) while a prompt runs; the restarted server runs that prompt again, and
    the editor reconnects by itself, shows the job running again and its image at the end."""
    server = ServerProcess(tmp_path).start()
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        open_editor(page, server.url)
        load_workflow(page, steps_workflow(width=8, steps=20, seconds=0.1), "crash.json")
        page.click("#queue-button")
        page.wait_for_selector(f"{node_selector(2)}.node-executing .node-progress.active", timeout=30_000)
        server.kill()
        page.wait_for_selector("body.disconnected", timeout=10_000)
        assert page.locator("#connection").inner_text() == "reconnecting…"
        watch_node(page, 2)
        server.start()
        page.wait_for_function("document.getElementById('connection').textContent === 'connected'", timeout=30_000)
        page.locator(f"{node_selector(3)} img.node-output-image").wait_for(timeout=30_000)
        resumed = node_states(page, 2)
        assert any(state["executing"] for state in resumed), resumed  # highlighted again after the restart
        assert page.locator(".node-executing").count() == 0
    finally:
        context.close()
        server.stop()


@browser
def test_workflows_menu_loads_a_shipped_workflow(page, server):
    """The Workflows menu lists workflows/ through GET /api/workflows and loads one (API format, laid out)."""
    import urllib.error

    try:
        listed = json.loads(urllib.request.urlopen(f"{server.url}/api/workflows").read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"the server answers {exc.code} to GET /api/workflows, the route the Workflows menu "
                    "reads (docs/editor.md, 'Server routes the editor uses')")
    assert "flux_schnell_txt2img.json" in listed
    page.click("#workflows-button")
    item = page.locator(".context-item[data-action='workflow:flux_schnell_txt2img.json']")
    item.wait_for(timeout=5_000)
    item.click()
    shipped = json.loads((WORKFLOWS_DIR / "flux_schnell_txt2img.json").read_text())
    page.wait_for_function(f"window.fluxgraph.graph.nodes.size === {len(shipped)}")
    prompt, registry = current_prompt(page), editor_registry()
    assert set(prompt) == set(shipped)
    for node_id, node in shipped.items():
        got = prompt[node_id]["inputs"]
        assert {name: got.get(name) for name in node["inputs"]} == node["inputs"], node_id
        schema = registry[node["class_type"]]
        added = {name: value for name, value in got.items() if name not in node["inputs"]}
        # the editor sends every widget: inputs newer than the file come with their (optional) defaults
        assert all(schema.input(name).optional and schema.input(name).default == value
                   for name, value in added.items()), (node_id, added)


@browser
def test_first_visit_opens_the_default_workflow(page, server):
    """Like ComfyUI, a first visit (nothing autosaved) opens a ready-to-run graph rather than an empty canvas."""
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='true']", timeout=15_000)
    shipped = json.loads((WORKFLOWS_DIR / "flux_schnell_txt2img.json").read_text())
    page.wait_for_function(f"window.fluxgraph.graph.nodes.size === {len(shipped)}")
    assert {k: v["class_type"] for k, v in current_prompt(page).items()} == {
        k: v["class_type"] for k, v in shipped.items()}


@browser
@pytest.mark.slow
def test_shipped_flux_workflow_runs_on_the_tiny_zoo(chromium, tmp_path):
    """Open the shipped FLUX schnell workflow, change widgets, queue it on the tiny zoo, watch the sampler's
    progress and the image appear in Save Image."""
    live = LiveServer(tmp_path, models_dir=tiny_zoo_models_dir()).start()
    context = chromium.new_context(viewport={"width": 1500, "height": 900})
    try:
        page = context.new_page()
        open_editor(page, live.url)
        page.set_input_files("#open-file", str(WORKFLOWS_DIR / "flux_schnell_txt2img.json"))
        page.wait_for_selector(node_selector(13))
        set_widget(page, 5, "width", "128")
        set_widget(page, 5, "height", "64")
        set_widget(page, 17, "steps", "3")
        watch_node(page, 13)
        page.click("#queue-button")
        image = page.locator(f"{node_selector(9)} img.node-output-image")
        image.wait_for(timeout=60_000)
        wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 128, what="image loaded")
        assert image.evaluate("img => img.naturalHeight") == 64
        page.wait_for_selector("#status-text.status-success")
        running = [state["progress"] for state in node_states(page, 13) if state["executing"]]
        assert "3/3" in running, running  # the sampler was highlighted with its progress bar at each step
        page.click("#fit-button")
        screenshot(page, "editor_flux_schnell_run")
    finally:
        context.close()
        live.stop()


def editor_only_nodes_workflow() -> dict:
    """A UI-format workflow with the editor-only parts: a Primitive driving a widget, a Reroute, a bypassed
    node and a Note (links in both the array and the object shape)."""
    def socket(name, type_, link=None, widget=False):
        entry = {"name": name, "type": type_, "link": link}
        return {**entry, "widget": {"name": name}} if widget else entry

    nodes = [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [240, 160], "mode": 0, "flags": {}, "order": 1,
         "inputs": [socket("width", "INT", 1, True), socket("height", "INT", None, True),
                    socket("batch_size", "INT", None, True), socket("color", "INT", None, True)],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": [64, 12, 1, 0x00FF00]},
        {"id": 2, "type": "PrimitiveNode", "pos": [-300, 0], "mode": 0, "flags": {}, "order": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [1], "widget": {"name": "width"}}],
         "widgets_values": [20, "fixed"], "title": "Width"},
        {"id": 3, "type": "Reroute", "pos": [300, 0], "mode": 0, "flags": {}, "order": 2,
         "inputs": [{"name": "", "type": "*", "link": 2}], "outputs": [{"name": "", "type": "IMAGE", "links": [3]}]},
        {"id": 4, "type": "ImageInvert", "pos": [450, 0], "mode": 4, "flags": {}, "order": 3,
         "inputs": [{"name": "image", "type": "IMAGE", "link": 3}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}], "widgets_values": []},
        {"id": 5, "type": "SaveImage", "pos": [700, 0], "mode": 0, "flags": {}, "order": 4,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 4}], "outputs": [], "widgets_values": ["editor_only"]},
        {"id": 6, "type": "Note", "pos": [0, 300], "mode": 0, "flags": {}, "order": 5, "inputs": [], "outputs": [],
         "widgets_values": ["notes never reach the server"]},
    ]
    links = [[1, 2, 0, 1, 0, "INT"], [2, 1, 0, 3, 0, "IMAGE"],
             {"id": 3, "origin_id": 3, "origin_slot": 0, "target_id": 4, "target_slot": 0, "type": "IMAGE"},
             [4, 4, 0, 5, 0, "IMAGE"]]
    groups = [{"title": "Inputs", "bounding": [-340, -60, 620, 280], "color": "#3f789e", "font_size": 24}]
    return {"last_node_id": 6, "last_link_id": 4, "nodes": nodes, "links": links, "groups": groups,
            "config": {}, "extra": {}, "version": 0.4}


@browser
def test_editor_only_nodes_queue_like_the_engine_converts_them(page):
    """Reroute, Primitive, bypass and Note: the editor's queued prompt equals what engine.workflow.convert makes of
    the same file, and it runs (the Primitive's width reaches the image)."""
    from engine.workflow.convert import convert_ui_workflow

    workflow = editor_only_nodes_workflow()
    load_workflow(page, workflow, "editor_only.json")
    assert page.locator(".node").count() == 6
    assert page.locator(f"{node_selector(4)}.node-bypassed").count() == 1
    assert page.locator(widget(2, "width")).input_value() == "20"  # the Primitive shows the width widget
    assert page.locator(f"{node_selector(1)} .widget-row[data-input='width'].widget-linked").count() == 1
    queued = current_prompt(page)
    converted = convert_ui_workflow(workflow, editor_registry(), dynamic_prompts=False).prompt
    assert {k: (v["class_type"], v["inputs"]) for k, v in queued.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in converted.items()}
    assert queued["1"]["inputs"]["width"] == 20 and queued["5"]["inputs"]["images"] == ["1", 0]
    page.click("#queue-button")
    image = page.locator(f"{node_selector(5)} img.node-output-image")
    image.wait_for(timeout=15_000)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 20, what="image loaded")
    # The group is drawn, and dragging its title moves the nodes inside it (not the others).
    title = page.locator(".group .group-title")
    assert title.inner_text() == "Inputs"
    scale = page.evaluate("window.fluxgraph.canvas.scale")
    box = title.bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 120, box["y"] + 60, steps=4)
    page.mouse.up()
    positions = page.evaluate("[1, 2, 5].map(id => window.fluxgraph.graph.nodes.get(id).pos)")
    assert positions[0] == [round(100 / scale), round(50 / scale)]
    assert positions[1] == [-300 + round(100 / scale), round(50 / scale)]
    assert positions[2] == [700, 0]
    assert saved_workflow(page)["groups"][0]["bounding"][:2] == [-340 + round(100 / scale), -60 + round(50 / scale)]


@browser
def test_a_missing_model_names_where_to_download_it(page):
    """A UI workflow's download hints (`properties.models`) reach the loader's error in the editor."""
    fixture = WORKFLOWS_DIR.parent / "tests" / "fixtures" / "ui" / "flux_dev_with_model_hints.json"
    load_workflow(page, json.loads(fixture.read_text()), "hints.json")
    page.click("#queue-button")
    row = page.locator(f"{node_selector(10)} .widget-row[data-input='unet_name']")
    row.locator(".input-error-text").wait_for()
    text = row.locator(".input-error-text").inner_text()
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors" in text
    assert "diffusion_models" in text
