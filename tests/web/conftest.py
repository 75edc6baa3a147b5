"""Fixtures of the builtin-editor browser tests: one Chromium and one live server per test module."""

from __future__ import annotations

import pytest

from tests.support.web import CHROMIUM, CHROMIUM_MISSING, LiveServer, launch_chromium


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
