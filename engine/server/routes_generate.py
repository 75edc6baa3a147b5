"""POST /api/generate, GET /api/generate/variants, GET /api/variants: HTTP around the recipes.

The graphs are built by `engine.recipes` (prompt-to-prompt, no HTTP); this module reads the request, maps a
`RecipeError` to the 400 error shape and queues the prompt as POST /prompt does.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

from aiohttp import web

from engine.recipes.errors import RecipeError
from engine.recipes.generate import generate_prompt
from engine.recipes.variants import describe_variants, installed_variants, known_variants
from engine.server.errors import ApiError, json_response, read_json_object
from engine.server.routes_prompt import submit_prompt
from engine.server.state import ServerState, state_of

T = TypeVar("T")


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking recipe step (it reads and validates workflow files) off the event loop."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)
    except RecipeError as exc:
        raise ApiError(400, exc.kind, exc.message, exc.details, **exc.extra_info) from None


def _runnable(state: ServerState) -> Callable[[dict[str, Any]], bool]:
    return lambda workflow: state.runtime.validate(workflow).ok


async def post_generate(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json_object(request)
    generated = await _in_thread(generate_prompt, body, state.config.workflows_dir, _runnable(state))
    prompt_body: dict[str, Any] = {"prompt": generated.prompt,
                                   "extra_data": {"fluxgraph_generate": {"variant": generated.variant}}}
    if generated.client_id:
        prompt_body["client_id"] = generated.client_id
    queued = await submit_prompt(state, prompt_body)
    return json_response({**queued, "variant": generated.variant, "seed": generated.seed,
                          "ignored": generated.ignored})


async def get_generate_variants(request: web.Request) -> web.Response:
    state = state_of(request)
    installed = await _in_thread(installed_variants, state.config.workflows_dir, _runnable(state))
    return json_response({"installed": list(installed), "known": known_variants(state.config.workflows_dir)})


async def get_variants(request: web.Request) -> web.Response:
    """Every known variant: installed or not, family, defaults (steps, guidance, cfg, size), reference images."""
    state = state_of(request)
    installed = await _in_thread(installed_variants, state.config.workflows_dir, _runnable(state))
    variants = describe_variants(state.config.workflows_dir, installed)
    return json_response({"variants": variants, "installed": list(installed)})


def routes() -> list[tuple[str, str, Any]]:
    return [("POST", "/generate", post_generate), ("GET", "/generate/variants", get_generate_variants),
            ("GET", "/variants", get_variants)]
