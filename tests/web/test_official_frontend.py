"""ComfyUI's official frontend (PyPI `comfyui-frontend-package`, the optional `frontend` extra) served by
fluxgraph: `--front-end` / `--front-end-root` parsing and static serving without a browser, then Playwright
tests in Debian's Chromium against the real frontend on a live server (no proxy, nothing from the network).

Screenshots are written to tests/artifacts/ for people to look at; nothing compares pixels.
"""

from __future__ import annotations

import argparse

import pytest

from engine.server import add_serve_arguments, build_config, frontends
from engine.server.app import create_app
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
    assert '".[test,ray,export,frontend]"' in makefile  # make test's install: the browser tests run in CI
    run_rule = next(line for line in makefile.splitlines() if line.startswith("run:"))
    assert "$(VENV)/.installed-frontend" in run_rule and '-e ".[frontend]"' in makefile
