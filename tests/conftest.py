"""Settings and fixtures for every test folder. Plain helpers live in tests/support/."""

from __future__ import annotations

import os

import pytest

from tests.support.torch_threads import single_thread

# Set before any test module imports huggingface_hub/transformers (they read it once): never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models on one torch thread for a whole module, which opts in with
    `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    with single_thread():
        yield
