"""Fixtures of the builtin-editor browser tests: one Chromium, one live server and one browser context per
test module; each test gets a fresh page that fails the test on any page error."""

from __future__ import annotations

import pytest

from tests.support.web import CHROMIUM, CHROMIUM_MISSING, LiveServer, launch_chromium, open_editor


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server with every node pack plus the test nodes, on an empty base folder."""
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    live = LiveServer(tmp_path_factory.mktemp("editor-server")).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser_context(chromium, server):
    """One browser context for the module (a new one costs ~0.5 s); every page starts with empty storage,
    so no test sees another's autosaved canvas or clipboard."""
    context = chromium.new_context(viewport={"width": 1400, "height": 850}, accept_downloads=True)
    context.add_init_script("window.localStorage.clear(); window.sessionStorage.clear();")
    yield context
    context.close()


@pytest.fixture
def page(browser_context, server):
    opened = browser_context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    open_editor(opened, server.url)
    yield opened
    opened.close()
    assert not problems, problems
