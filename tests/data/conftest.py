"""A scripted HTTP server on 127.0.0.1 for the download tests (no other host is ever contacted)."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

BEHAVIOURS = ("ok", "ignore_range", "truncate", "stall", "cut_once", "fail_then_ok")


@dataclass
class Route:
    """How the server answers GET on one path.

    ok: 200, or 206/416 for a ``Range: bytes=N-`` request. ignore_range: always 200 with the full
    body. truncate: 200 announcing the full Content-Length, half the body, then close (every time).
    stall: 200 with headers and ``stall_after`` bytes, then silence until the test ends.
    cut_once: like truncate on the first request, like ok afterwards.
    fail_then_ok: ``status`` for the first ``failures`` requests, then like ok.
    """

    body: bytes
    behaviour: str = "ok"
    failures: int = 0
    status: int = 503
    stall_after: int = 0


class FakeHub:
    """Serves registered bodies; records every request as ``(path, Range header or None)``."""

    def __init__(self, server: ThreadingHTTPServer):
        self.server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def serve(self, path: str, body: bytes, behaviour: str = "ok", **options) -> str:
        """Answer GET ``path`` per ``behaviour`` (see :class:`Route`); returns the full URL."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.routes[path] = Route(body, behaviour, **options)
        return self.base_url + path

    def serve_hf(self, repo: str, name: str, body: bytes, behaviour: str = "ok", **options) -> str:
        """Serve at the Hugging Face plain-file path ``/datasets/<repo>/resolve/main/<name>``."""
        return self.serve(f"/datasets/{repo}/resolve/main/{quote(name)}", body, behaviour, **options)

    def count(self, path_or_url: str) -> int:
        path = path_or_url.removeprefix(self.base_url)
        with self.lock:
            return sum(1 for p, _ in self.requests if p == path)

    def ranges(self, path_or_url: str) -> list[str | None]:
        path = path_or_url.removeprefix(self.base_url)
        with self.lock:
            return [r for p, r in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        hub: FakeHub = self.server.hub
        range_header = self.headers.get("Range")
        with hub.lock:
            hub.requests.append((self.path, range_header))
            nth = sum(1 for p, _ in hub.requests if p == self.path)
        route = hub.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.behaviour == "ok":
            self._send_range_aware(route.body, range_header)
        elif route.behaviour == "ignore_range":
            self._send_full(route.body)
        elif route.behaviour == "truncate" or (route.behaviour == "cut_once" and nth == 1):
            self._send_headers(200, len(route.body))
            self.wfile.write(route.body[: len(route.body) // 2])
            self.close_connection = True
        elif route.behaviour == "cut_once":
            self._send_range_aware(route.body, range_header)
        elif route.behaviour == "stall":
            self._send_headers(200, len(route.body))
            self.wfile.write(route.body[: route.stall_after])
            hub.stop.wait(30)  # released when the fixture shuts the server down
            self.close_connection = True
        elif route.behaviour == "fail_then_ok":
            if nth <= route.failures:
                self.send_error(route.status)
            else:
                self._send_range_aware(route.body, range_header)

    def _send_headers(self, status: int, length: int, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send_full(self, body: bytes):
        self._send_headers(200, len(body))
        self.wfile.write(body)

    def _send_range_aware(self, body: bytes, range_header: str | None):
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if not match:
            self._send_full(body)
            return
        start = int(match.group(1))
        if start >= len(body):
            self._send_headers(416, 0, {"Content-Range": f"bytes */{len(body)}"})
            return
        self._send_headers(206, len(body) - start, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        self.wfile.write(body[start:])


@pytest.fixture
def hub():
    """A :class:`FakeHub` on 127.0.0.1 (OS-chosen port), shut down when the test ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    fake = FakeHub(server)
    server.hub = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
