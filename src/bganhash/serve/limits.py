"""The service's bounds on untrusted requests: the Host header, JSON bodies, form numbers, and the uploads let in.

`HostCheck` (ASGI middleware) answers only to the names the server is bound to, against DNS rebinding;
`load_json` refuses NaN, Infinity and deep nesting; `UploadGate` bounds how many uploads are read, decoded and
waiting for the backbone at once, so that the memory of a burst of uploads stays bounded.
"""

from __future__ import annotations

import functools
import json
import math
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import HTTPException

__all__ = ["LOOPBACK_HOSTS", "MAX_JSON_BYTES", "HostCheck", "UploadGate", "default_allowed_hosts", "json_safe",
           "load_json", "return_large_images_to_the_system", "whole_number"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_JSON_BYTES = 16_384  # a search by id is {"id": ..., "k": ...}
_WILDCARD_BINDS = {"", "0.0.0.0", "::"}
_PILLOW_BLOCK_BYTES = 64 << 20  # above glibc's largest mmap threshold (32 MB): such blocks are unmapped when freed
_WHOLE_NUMBER = re.compile(r"\s*([0-9]{1,9})\s*")
Result = TypeVar("Result")


def default_allowed_hosts(bound_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names a server bound to `bound_host` answers to: the loopback names, the bound address (or, bound
    to every interface, this machine's name), then `extra` ("*" accepts any, "*.example.com" a domain)."""
    hosts = list(LOOPBACK_HOSTS)
    if bound_host in _WILDCARD_BINDS:
        hosts.append(socket.gethostname())  # no DNS lookup: an address needs --allowed-host
    else:
        hosts.append(bound_host)
    hosts += list(extra)
    return list(dict.fromkeys(_host_name(host) for host in hosts if host))


def _host_name(host: str) -> str:
    """The name part of a Host header value, lower-cased: "[::1]:8000" -> "::1", "Example.COM.:80" -> "example.com"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def return_large_images_to_the_system() -> None:
    """Make Pillow allocate large images in blocks of 64 MB (16 MB by default), which the C allocator maps and
    unmaps whole: a decoded bomb's memory then goes back to the system when it is freed, instead of staying in
    the decoding thread's heap (8 bombs decoded in turn on different threads held 1 GB more, before)."""
    from PIL import Image

    Image.core.set_block_size(max(_PILLOW_BLOCK_BYTES, Image.core.get_block_size()))


class HostCheck:
    """ASGI middleware: answer 400 to a request whose Host header names none of `allowed_hosts` (DNS rebinding:
    a page on evil.example.com whose name now resolves to 127.0.0.1 sends "Host: evil.example.com")."""

    def __init__(self, app: Any, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        names = [_host_name(host) for host in allowed_hosts if host != "*"]
        self.exact = {name for name in names if not name.startswith("*.")}
        self.domains = tuple(name[1:] for name in names if name.startswith("*."))
        self.shown = ", ".join(sorted(self.exact) + [f"*{domain}" for domain in self.domains])

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        return self.any_host or name in self.exact or any(name.endswith(domain) for domain in self.domains)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.any_host:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.allows(host):
            return await self.app(scope, receive, send)
        shown = f"the Host header {host[:100]!r}" if host else "a request without a Host header"
        hint = f"; to accept it, start the server with --allowed-host {_host_name(host)[:100]}" if host else ""
        await send_json_error(send, 400, f"{shown} names none of the hosts this server answers to "
                                         f"({self.shown}){hint}")


async def send_json_error(send: Any, status: int, message: str) -> None:
    """Answer {"error": message} with `status` straight from ASGI middleware, and close the connection."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return value


def load_json(body: bytes) -> Any:
    """Parse a small JSON body; ValueError saying why for one over MAX_JSON_BYTES, NaN, Infinity, numbers out of
    range, or nesting too deep for the parser."""
    if len(body) > MAX_JSON_BYTES:
        raise ValueError(f"the body is {len(body):,} bytes; a JSON search is at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def json_safe(value: Any) -> Any:
    """`value` (validation errors) made JSON-serialisable: non-finite floats and unknown objects as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def whole_number(text: str) -> int | None:
    """The value of a form field holding a whole number in ASCII digits ("12", " 7 "), or None for anything else
    ("²", "1.5", "-3", a thousand digits)."""
    match = _WHOLE_NUMBER.fullmatch(text)
    return int(match.group(1)) if match else None


class UploadGate:
    """At most `slots` uploads between the start of their decoding and the end of their encoding, and at most
    `queue` more read and waiting their turn (in the event loop, holding only their bytes); beyond, a 503."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = anyio.CapacityLimiter(slots)
        self.queue = queue
        self.admitted = 0  # uploads being received, waiting or processed

    def admit(self) -> None:
        """Take a place for an upload about to be received, or raise 503 when every place is taken."""
        if self.admitted >= self.slots.total_tokens + self.queue:
            raise HTTPException(503, f"the server is busy with {self.admitted} uploads; try again in a moment",
                                headers={"Retry-After": "1"})
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """Run `function(*args)` on a worker thread once a slot is free."""
        return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=self.slots)
