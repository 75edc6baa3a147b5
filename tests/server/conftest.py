"""Fixtures of the server tests. Modules that need another server (the FLUX zoo, security roots) define
their own `client`, which overrides this one."""

from __future__ import annotations

import pytest_asyncio

from engine.server.app import create_app
from tests.support.server import make_config, make_runtime


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    """The real app over the core nodes and the toy test pack, in a fresh base folder."""
    return await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path)))
