"""Browsers cannot be turned against a local server: Host allow-list, Origin checks, auth token, CORS.

- **Host** (DNS rebinding): the Host header must name this machine: loopback names by default, the names
  given with `--host`/`--allow-host`, and, when listening beyond loopback, IP literals (a rebinding attack
  always carries the attacker's domain name, never an IP).
- **Origin** (CSRF, CVE-2024-10481; GHSA-5xxr-jvhm-jxmj): a request carrying an Origin must come from this
  very origin (scheme-less host and effective port equal to the Host header's), or from the one origin given
  with `--enable-cors-header`. `Origin: null` (sandboxed iframes, file:// pages, some redirects) is refused.
  This covers websocket upgrades too, which browsers never restrict by CORS.
- **Auth token** (`--auth-token`): `Authorization: Bearer <token>` or `?token=<token>` (for the websocket
  and for `<img src=/view?...>`), compared in constant time, on every route.
- **CORS** headers only with `--enable-cors-header ORIGIN`.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from engine.server.config import ServerConfig, is_loopback
from engine.server.errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str, default_port: int | None) -> tuple[str, int | None]:
    """'Example.com:8188' -> ('example.com', 8188); '[::1]:80' -> ('::1', 80). Raises ValueError."""
    value = value.strip()
    if not value or any(c in value for c in " /\\@?#\x00"):
        raise ValueError(f"malformed host {value!r}")
    parts = urlsplit("//" + value)
    host = parts.hostname
    port = parts.port  # raises ValueError for a bad port
    if not host:
        raise ValueError(f"malformed host {value!r}")
    return host.lower(), port if port is not None else default_port


class HostPolicy:
    def __init__(self, config: ServerConfig) -> None:
        self.exposed = config.exposed
        names = {"localhost"}
        for name in [config.host, *config.listen, *config.allowed_hosts]:
            if name and name not in ("0.0.0.0", "::"):
                names.add(name.strip("[]").lower())
        if self.exposed:
            hostname = socket.gethostname().lower()
            names.update({hostname, hostname.split(".")[0]})
        self.names = frozenset(names)

    def allows(self, host: str) -> bool:
        if host in self.names or is_loopback(host):
            return True
        if self.exposed:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False


def _request_scheme_port(request: web.Request) -> int:
    return 443 if request.secure else 80


def make_security_middleware(config: ServerConfig) -> Callable:
    hosts = HostPolicy(config)
    cors_origin = config.cors_origin.rstrip("/") if config.cors_origin else None
    token = config.auth_token

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        default_port = _request_scheme_port(request)
        host_header = request.headers.get("Host")
        host_name, host_port = None, None
        if host_header is not None:
            try:
                host_name, host_port = split_host(host_header, default_port)
            except ValueError:
                raise ApiError(400, "bad_host", "Malformed Host header", host_header[:100]) from None
            if not hosts.allows(host_name):
                raise ApiError(403, "host_not_allowed", "Host header names a host this server does not answer for",
                               f"Host {host_header[:100]!r}; allowed: loopback names and --allow-host names")
        origin = request.headers.get("Origin")
        if origin is not None:
            _check_origin(origin, cors_origin, host_name, host_port)
        if request.method == "OPTIONS" and cors_origin is not None:
            response: web.StreamResponse = web.Response(status=200)
        else:
            explicit_token = token is not None and _check_token(request, token)
            response = await handler(request)
            if explicit_token and not response.prepared and request.cookies.get(TOKEN_COOKIE) != token:
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        if cors_origin is not None and not response.prepared:
            _add_cors_headers(response, cors_origin, origin)
        return response

    return security


def _check_origin(origin: str, cors_origin: str | None, host_name: str | None, host_port: int | None) -> None:
    if origin.strip().lower() == "null":
        raise ApiError(403, "origin_refused", "Requests with 'Origin: null' are refused",
                       "sandboxed frames and file:// pages may not drive this server")
    if cors_origin is not None and (cors_origin == "*" or origin.rstrip("/") == cors_origin):
        return
    try:
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("not an http(s) origin")
        origin_host = parts.hostname.lower()
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ApiError(403, "origin_refused", "Malformed Origin header", origin[:100]) from None
    if host_name is None or origin_host != host_name or origin_port != host_port:
        raise ApiError(403, "origin_refused", "Cross-origin request refused",
                       f"Origin {origin[:100]!r} does not match this server's host; start the server with "
                       "--enable-cors-header ORIGIN to allow one other origin")


TOKEN_COOKIE = "fluxgraph_token"


def _check_token(request: web.Request, token: str) -> bool:
    """Raises 401 unless the request carries the token; True when it came in the URL or a header.

    A browser that opened `/?token=...` gets the token back as a SameSite=Strict, HttpOnly cookie, so the
    editor's own style sheets, modules and API calls are let in; other sites cannot send that cookie, and
    the Origin check refuses them anyway.
    """
    given = ""
    explicit = True
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    elif "token" in request.query:
        given = request.query.get("token", "")
    else:
        given = request.cookies.get(TOKEN_COOKIE, "")
        explicit = False
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        raise ApiError(401, "unauthorized", "Missing or wrong auth token",
                       "send 'Authorization: Bearer <token>' or add '?token=<token>' to the URL")
    return explicit


def _add_cors_headers(response: web.StreamResponse, cors_origin: str, origin: str | None) -> None:
    response.headers["Access-Control-Allow-Origin"] = cors_origin
    response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    if cors_origin != "*":
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
