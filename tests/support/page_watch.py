"""What went wrong on a page of ComfyUI's official frontend under test (tests/web/test_official_frontend.py):
failed requests, answers >= 400, console and page errors, less what the frontend does by design."""

from __future__ import annotations

import importlib.util
import re

BOOTED = "window.app && window.app.graph && window.app.vueAppReady"
# The only 4xx answers the frontend asks for by design on a fresh user folder, answered exactly as ComfyUI answers it
# (the frontend reads 404 as "no node templates saved"); anything else failing is a bug of our server.
# workflows/.index.json holds the user's bookmarks once one is set: 404 means "none yet".
EXPECTED_MISSES = ("/api/userdata/comfy.templates.json", "/api/userdata/workflows%2F.index.json")


class PageWatch:
    """Everything that went wrong on a page: failed requests, answers >= 400, console errors, page errors."""

    def __init__(self, page, origin: str) -> None:
        self.problems: list[str] = []
        self.binary_frames = 0
        self.origin = origin
        self.reloading = False  # set around page.reload(): requests it cancels are not server failures
        self.offline: list[str] = []  # requests to other hosts that failed for lack of a network
        self._answered: set[int] = set()
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {str(e)[:300]}"))
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _failed(self, request) -> None:
        # Chromium reports an answered request whose empty body the page never reads (the frontend's POST
        # /settings/{id}, 200 with no body, as ComfyUI answers it) as aborted: not a failure of the server.
        # So are the requests a page.reload() cancels while they are in flight.
        if request.failure == "net::ERR_ABORTED" and (id(request) in self._answered or self.reloading):
            return
        # The frontend asks model hosts (Hugging Face) for the size of a template's missing models; with no
        # network here those fail by name resolution, as in ComfyUI offline: not a request to our server.
        if not request.url.startswith(self.origin) and request.failure == "net::ERR_NAME_NOT_RESOLVED":
            self.offline.append(request.url)
            return
        self.problems.append(f"request failed: {request.method} {request.url} {request.failure}")

    def _console(self, message) -> None:
        if message.type != "error":
            return
        if message.text == "Failed to load resource: net::ERR_NAME_NOT_RESOLVED":  # Chrome's echo of an offline miss
            return
        self.problems.append(f"console: {message.text[:300]}")

    def _response(self, response) -> None:
        if response.status < 400:
            self._answered.add(id(response.request))
        else:
            self.problems.append(f"{response.status} {response.request.method} {response.url} "
                                 f"({response.headers.get('content-type')})")

    def _frame(self, payload) -> None:
        if isinstance(payload, bytes):
            self.binary_frames += 1

    def _template_media_miss(self, problem: str) -> bool:
        """The JSON-only templates package (the 'templates' extra) has no thumbnails or logos: those are in
        the media bundles of the full comfyui-workflow-templates."""
        if importlib.util.find_spec("comfyui_workflow_templates_media_image") is not None:
            return False
        pattern = (r"^404 GET " + re.escape(self.origin) + r"/templates/\S+\.(jpe?g|png|webp|gif|svg|mp4|webm|mp3) "
                   r"|^console: Failed to fetch: 404$")  # how the frontend logs a thumbnail miss
        return re.match(pattern, problem) is not None

    def reload(self, page) -> None:
        """page.reload(), not counting the requests it cancels."""
        self.reloading = True
        try:
            page.reload()
            page.wait_for_function(BOOTED, timeout=60_000)
        finally:
            self.reloading = False

    def unexpected(self) -> list[str]:
        """Problems other than the expected misses (and the console line Chrome logs for each of them)."""
        expected = [p for p in self.problems if any(self.origin + miss in p for miss in EXPECTED_MISSES)
                    or self._template_media_miss(p)]
        console_echoes = len(expected)
        left = []
        for problem in self.problems:
            if problem in expected:
                continue
            if console_echoes and problem.startswith("console: Failed to load resource: the server responded "
                                                     "with a status of 404"):
                console_echoes -= 1
                continue
            left.append(problem)
        return left
