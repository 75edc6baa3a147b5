"""Frontend helper routes answer as ComfyUI 0.8.0 does on a fresh user folder (captures in
tests/fixtures/comfy_reference/frontend_routes.json)."""

from __future__ import annotations

import json

import pytest

from tests.support.reference import REFERENCE_DIR

pytestmark = pytest.mark.asyncio
CAPTURES = {c["request"]: c for c in json.loads((REFERENCE_DIR / "frontend_routes.json").read_text())["captures"]}


@pytest.mark.parametrize("route", ["users", "workflow_templates"])
@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_route_matches_comfyui(client, route, prefix):
    capture = CAPTURES[f"GET /api/{route}"]
    response = await client.get(f"{prefix}/{route}")
    assert response.status == capture["status"]
    assert response.content_type == "application/json"
    assert await response.json() == capture["body"]
