"""The builtin editor's gaps of issue #17, each driven as a user would in Chromium against a live server:
focus leaves text fields on a canvas click, a title double-click opens the search, undo/redo of every edit,
Ctrl+G groups, UI workflows with subgraphs run and open, R refreshes the model lists, growing nodes push their
neighbours, and the global progress bar with the step in the tab title.

Screenshots go to tests/artifacts/ for looking at; nothing compares pixels.
"""

from __future__ import annotations

import json
from PIL import Image

from tests.support.web import (WORKFLOWS_DIR, add_node_by_search, centre,
                               drag, input_socket, load_workflow, node_ids, node_selector,
                               output_socket, saved_workflow, screenshot, widget)
from tests.support.waiting import wait_until

FIXTURES = WORKFLOWS_DIR.parent / "tests" / "fixtures" / "ui"


def steps_workflow(steps: int = 4, seconds: float = 0.05) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "WebTestSteps", "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "gaps"}},
    }


def blank_spot(page) -> tuple[float, float]:
    """A point of the canvas with no node on it (below and right of everything)."""
    box = page.locator("#canvas").bounding_box()
    return box["x"] + box["width"] - 30, box["y"] + box["height"] - 30


def settled(page) -> None:
    """Waits until the undo history has taken its snapshot of the last edit."""
    wait_until(lambda: page.evaluate("window.fluxgraph.history.timer === null"), what="undo snapshot taken")


def state(page) -> dict:
    """What undo must bring back: nodes (type, position, title, mode, values), links and groups."""
    saved = saved_workflow(page)
    return {"nodes": sorted((n["id"], n["type"], tuple(n["pos"]), n.get("title"), n["mode"],
                             json.dumps(n["widgets_values"])) for n in saved["nodes"]),
            "links": sorted(tuple(link) for link in saved["links"]),
            "groups": [(g["title"], tuple(g["bounding"])) for g in saved["groups"]]}


def drag_to(page, selector: str, point: tuple[float, float]) -> None:
    x0, y0 = centre(page, selector)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(*point, steps=6)
    page.mouse.up()


def press_on_canvas(page, keys: str) -> None:
    page.mouse.click(*blank_spot(page))
    page.keyboard.press(keys)


# ------------------------------------------------------------------------------------------------ 1, 2


def test_a_click_on_the_canvas_takes_the_keys_from_a_text_field(page):
    load_workflow(page, steps_workflow(steps=1, seconds=0.0), "focus.json")
    field = page.locator(widget(3, "filename_prefix"))
    field.click()
    page.keyboard.type("_x")
    page.mouse.click(*blank_spot(page))
    assert page.evaluate("document.activeElement.id") == "canvas"
    page.keyboard.press("Control+Enter")  # queues (the field's edit was committed by the blur)
    page.wait_for_selector("#status-text.status-success", timeout=15_000)
    assert page.evaluate("window.fluxgraph.graph.nodes.get(3).values.get('filename_prefix')") == "gaps_x"
    # Typing in the field again, then a click on another node's title: Delete removes that node, not text.
    field.click()
    page.mouse.click(*centre(page, f"{node_selector(1)} .node-title-text"))
    page.keyboard.press("Delete")
    wait_until(lambda: 1 not in node_ids(page), what="node 1 deleted")
    assert field.input_value() == "gaps_x"
    # Ctrl+Enter typed inside a text field still queues.
    field.click()
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#status-text.status-error", timeout=15_000)  # refused: node 1 is gone
    assert "Prompt refused" in page.locator("#status-text").inner_text()


def test_double_click_on_a_title_opens_the_search_and_f2_renames(page):
    load_workflow(page, steps_workflow(), "titles.json")
    page.mouse.dblclick(*centre(page, f"{node_selector(2)} .node-title-text"))
    page.wait_for_selector(".search-menu:not([hidden]) .search-input")
    assert page.locator(".title-edit").count() == 0
    page.keyboard.press("Escape")
    page.mouse.click(*centre(page, f"{node_selector(2)} .node-title-text"))
    page.keyboard.press("F2")
    page.locator(".title-edit").fill("Slow one")
    page.keyboard.press("Enter")
    assert page.locator(f"{node_selector(2)} .node-title-text").inner_text() == "Slow one"
    # The node menu renames too.
    page.click(f"{node_selector(1)} .node-title-text", button="right")
    page.click(".context-menu .context-item[data-action='rename']")
    page.locator(".title-edit").fill("Blue")
    page.keyboard.press("Enter")
    assert page.locator(f"{node_selector(1)} .node-title-text").inner_text() == "Blue"


# ------------------------------------------------------------------------------------------------ 3, 4


def test_undo_and_redo_every_kind_of_edit(page):
    states = [state(page)]

    def step() -> None:
        settled(page)
        states.append(state(page))
        assert states[-1] != states[-2], "the edit changed nothing"

    first = add_node_by_search(page, "empty image", "EmptyImage", (300, 300))
    step()
    second = add_node_by_search(page, "invert", "ImageInvert", (700, 320))
    step()
    page.mouse.move(*centre(page, f"{node_selector(second)} .node-title-text"))
    page.mouse.down()
    page.mouse.move(760, 420, steps=5)
    page.mouse.up()  # moved
    step()
    field = page.locator(widget(first, "width"))
    field.fill("77")
    field.press("Tab")
    page.mouse.click(*blank_spot(page))  # a widget value
    step()
    drag(page, output_socket(first, 0), input_socket(second, "image"))  # connected
    step()
    drag_to(page, input_socket(second, "image"), blank_spot(page))  # picks the link up, drops it on nothing
    page.keyboard.press("Escape")  # disconnected (the link dropped on empty canvas)
    step()
    page.mouse.click(*centre(page, f"{node_selector(first)} .node-title-text"))
    page.keyboard.press("Control+c")
    page.mouse.move(400, 600)
    page.keyboard.press("Control+v")  # pasted
    step()
    page.keyboard.press("Control+a")
    page.keyboard.press("Control+g")  # grouped
    step()
    page.keyboard.press("Delete")  # deleted
    step()
    for expected in reversed(states[:-1]):
        page.keyboard.press("Control+z")
        assert state(page) == expected
    page.keyboard.press("Control+z")  # nothing left: no change
    assert state(page) == states[0]
    for expected in states[1:4]:
        page.keyboard.press("Control+y")
        assert state(page) == expected
    for expected in states[4:]:
        page.keyboard.press("Control+Shift+z")
        assert state(page) == expected


def test_ctrl_g_groups_the_selection_behind_the_nodes_and_the_group_moves_them(page):
    load_workflow(page, steps_workflow(), "group.json")
    page.mouse.click(*centre(page, f"{node_selector(1)} .node-title-text"))
    page.keyboard.down("Shift")
    page.mouse.click(*centre(page, f"{node_selector(2)} .node-title-text"))
    page.keyboard.up("Shift")
    page.keyboard.press("Control+g")
    (group,) = saved_workflow(page)["groups"]
    x, y, w, h = group["bounding"]
    nodes = {n["id"]: n for n in saved_workflow(page)["nodes"]}
    for node_id in (1, 2):
        nx, ny = nodes[node_id]["pos"]
        assert x < nx and y < ny and nx + nodes[node_id]["size"][0] < x + w and ny + nodes[node_id]["size"][1] < y + h
    assert not (x < nodes[3]["pos"][0] < x + w and y < nodes[3]["pos"][1] < y + h)
    box = page.locator(".group").first
    assert box.evaluate("el => getComputedStyle(el).zIndex") == "-1"
    scale = page.evaluate("window.fluxgraph.canvas.scale")
    gx, gy = centre(page, ".group-title")
    page.mouse.move(gx, gy)
    page.mouse.down()
    page.mouse.move(gx + 50 * scale, gy + 40 * scale, steps=4)
    page.mouse.up()
    moved = {n["id"]: n["pos"] for n in saved_workflow(page)["nodes"]}
    assert moved[1] == [nodes[1]["pos"][0] + 50, nodes[1]["pos"][1] + 40]
    assert moved[2] == [nodes[2]["pos"][0] + 50, nodes[2]["pos"][1] + 40]
    assert moved[3] == nodes[3]["pos"]
    assert saved_workflow(page)["groups"][0]["bounding"] == [x + 50, y + 40, w, h]


# ------------------------------------------------------------------------------------------------ 5


def test_a_ui_workflow_with_a_subgraph_runs_and_the_subgraph_opens(page, server):
    workflow = json.loads((FIXTURES / "core_invert_subgraph.json").read_text())
    load_workflow(page, workflow, "subgraph.json")
    assert "not installed" not in page.locator("#status-text").inner_text()
    instance = page.locator(f"{node_selector(4)}.node-subgraph")
    assert instance.locator(".node-title-text").inner_text() == "Invert (subgraph)"
    page.click("#queue-button")
    image = page.locator(f"{node_selector(5)} img.node-output-image")
    image.wait_for(timeout=15_000)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") > 0, what="image loaded")
    width = image.evaluate("img => img.naturalWidth")
    # Inside: the subgraph's two nodes; a value and a mode changed there are kept on the way back and runs.
    instance.locator(".node-open-subgraph").click()
    page.wait_for_selector("#subgraph-bar:not([hidden])")
    assert sorted(node_ids(page)) == [1, 2]
    assert "Invert" in page.locator("#subgraph-bar").inner_text()
    page.locator(widget(2, "scale_by")).fill("0.5")
    page.locator(widget(2, "scale_by")).press("Tab")
    page.mouse.click(*centre(page, f"{node_selector(2)} .node-title-text"))
    page.keyboard.press("Control+b")  # the scale was bypassed in the file
    page.click("#subgraph-back")
    assert sorted(node_ids(page)) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    saved = saved_workflow(page)
    inner = {n["id"]: n for n in saved["definitions"]["subgraphs"][0]["nodes"]}
    assert inner[2]["widgets_values"] == ["nearest-exact", 0.5] and inner[2]["mode"] == 0
    page.click("#queue-button")
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == width // 2,
               what="a half-size image")
    screenshot(page, "editor_subgraph_after_run")


# ------------------------------------------------------------------------------------------------ 6, 7, 8


def test_r_refreshes_the_file_lists_without_a_reload(page, server):
    load_workflow(page, {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}, "load.json")
    options = f"{widget(1, 'image')} option"
    assert "fresh_upload.png" not in page.locator(options).all_inner_texts()
    input_dir = server.base_dir / "input"
    input_dir.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(input_dir / "fresh_upload.png")
    page.evaluate("window.__marker = 'no reload'")
    press_on_canvas(page, "r")
    wait_until(lambda: "fresh_upload.png" in page.locator(options).all_inner_texts(), what="the new file listed")
    assert page.evaluate("window.__marker") == "no reload"


def test_a_node_that_grows_pushes_the_node_below_it(page):
    workflow = steps_workflow(steps=1, seconds=0.0)
    workflow["4"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    load_workflow(page, workflow, "grow.json")
    page.evaluate("""() => {
        const canvas = window.fluxgraph.canvas, save = canvas.views.get(3);
        const [x, y] = save.node.pos;
        window.fluxgraph.graph.moveNode(4, [x, y + save.element.offsetHeight + 8]);
    }""")
    rect = """(id) => { const v = window.fluxgraph.canvas.views.get(id);
                        return [v.node.pos[1], v.node.pos[1] + v.element.offsetHeight]; }"""
    before = page.evaluate(rect, 4)
    page.click("#queue-button")
    page.locator(f"{node_selector(3)} img.node-output-image").wait_for(timeout=15_000)
    wait_until(lambda: page.evaluate(rect, 3)[1] > before[0] - 8, what="the save node grew")
    wait_until(lambda: page.evaluate(rect, 4)[0] >= page.evaluate(rect, 3)[1], what="the node below moved down")
    screenshot(page, "editor_grown_node")


def test_progress_bar_and_step_in_the_tab_title(page):
    load_workflow(page, steps_workflow(steps=6, seconds=0.1), "progress.json")
    page.evaluate("""() => {
        window.__titles = [];
        window.__bar = [];
        new MutationObserver(() => window.__titles.push(document.title))
            .observe(document.querySelector('title'), { childList: true, characterData: true, subtree: true });
        const bar = document.getElementById('global-progress');
        new MutationObserver(() => window.__bar.push(bar.dataset.value || null))
            .observe(bar, { attributes: true, attributeFilter: ['data-value'] });
    }""")
    page.click("#queue-button")
    page.wait_for_selector("#status-text.status-success", timeout=15_000)
    titles = page.evaluate("window.__titles")
    assert "[3/6] fluxgraph" in titles and "[6/6] fluxgraph" in titles, titles
    assert page.evaluate("window.__bar").count("6/6") >= 1
    wait_until(lambda: page.title() == "fluxgraph", what="title back")
    assert "active" not in (page.locator("#global-progress").get_attribute("class") or "")
    screenshot(page, "editor_after_progress_run")
