"""A loopback HTTP proxy for the openai stack's tests: answers chosen requests with an error, passes the rest through.

The openai stack's retries and its dead-endpoint handling are properties of real network behaviour, so the tests put
this proxy between the stack and a real vLLM server: `fail_next(2, 429)` makes the next two requests get HTTP 429, and
`stop()` closes the listening socket and every open client connection (a dead endpoint); `start()` brings it back on
the same port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.proxy.lock:
            self.server.proxy.clients.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy.lock:
            self.server.proxy.clients.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def do_POST(self) -> None:  # noqa: N802
        self._forward()

    def _forward(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with proxy.lock:
            proxy.seen.append((self.command, self.path))
            fail = proxy.failures_left > 0 and self.path.startswith(proxy.fail_prefix)
            if fail:
                proxy.failures_left -= 1
                proxy.failed.append((self.command, self.path))
        if fail:
            data = json.dumps({"error": {"message": "rate limited by the test proxy"}}).encode()
            self._reply(proxy.fail_status, data, {"Content-Type": "application/json", "Retry-After": "0"})
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        up = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
        try:
            up.request(self.command, self.path, body=body, headers=headers)
            resp = up.getresponse()
            data = resp.read()
            ctype = resp.getheader("Content-Type", "application/json")
            self._reply(resp.status, data, {"Content-Type": ctype})
        except OSError as exc:
            self._reply(502, json.dumps({"error": {"message": f"upstream: {exc}"}}).encode(), {})
        finally:
            up.close()

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: BackoffProxy

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # connections cut by stop() are the point of the exercise


class BackoffProxy:
    """Forwards http://127.0.0.1:port/... to upstream; see the module docstring."""

    def __init__(self, upstream: str, port: int = 0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.port = port
        self.lock = threading.Lock()
        self.clients: set[socket.socket] = set()
        self.seen: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []
        self.failures_left = 0
        self.fail_status = 429
        self.fail_prefix = "/"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackoffProxy:
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="backoff-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: clients see a dead endpoint."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            clients = list(self.clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._server = None

    def fail_next(self, n: int, status: int = 429, path_prefix: str = "/") -> None:
        with self.lock:
            self.failures_left, self.fail_status, self.fail_prefix = n, status, path_prefix
