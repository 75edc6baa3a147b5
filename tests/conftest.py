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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA device: without one they skip, saying so."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch  # noqa: PLC0415 - only once a CUDA-only test was collected

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (marked gpu)"))
