"""Outgoing HTTP of the deliveries: POST a message Bundle to an organisation's endpoint.

Built on the standard library's ``http.client`` with kept-alive connections per endpoint
(scheme, host, port): httpx cost three times its CPU per request (measured: 1.3 ms against
0.45 ms per POST of a message), and every message is POSTed once per receiving organisation.
Threads may share a client: each request takes an idle connection of its endpoint (or opens
one) and gives it back when the answer is read, so concurrent POSTs to one endpoint use
connections of their own. No redirects are followed and nothing is retried
here except a request on a kept-alive connection the server had already closed (sent again
once, on a new connection, before any answer came): retrying is the outbox's business.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

_Key = tuple[str, str, int]
_IDLE_PER_ENDPOINT = 8  # kept-alive connections kept per endpoint; more are closed
# Raised by a kept-alive connection the server closed meanwhile: the request never got an
# answer, so it may be sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class HttpError(Exception):
    """The request got no answer (connection refused, reset, malformed response ...)."""


class HttpTimeout(HttpError):
    """No answer within the timeout."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    url: str
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class HttpClient:
    def __init__(self) -> None:
        # Idle connections per endpoint; list.pop and append are atomic, so threads share it.
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._tls = ssl.create_default_context()

    def post(self, url: str, *, content: bytes, headers: dict[str, str],
             timeout: float) -> HttpResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"'{url}' is not an http(s) URL")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                             else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        idle = self._idle.setdefault(key, [])
        for attempt in (1, 2):
            conn = self._take(idle)
            reused = conn is not None
            conn = conn or self._connect(key, timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("POST", target, body=content, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (TimeoutError, socket.timeout):
                conn.close()
                raise HttpTimeout(f"No answer from {url} within {timeout:g} s") from None
            except _STALE as exc:
                conn.close()
                if reused and attempt == 1:
                    continue
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            if resp.will_close or len(idle) >= _IDLE_PER_ENDPOINT:
                conn.close()
            else:
                idle.append(conn)
            return HttpResponse(url, resp.status, body)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _take(idle: list[http.client.HTTPConnection]) -> http.client.HTTPConnection | None:
        try:
            return idle.pop()
        except IndexError:
            return None

    def _connect(self, key: _Key, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def close(self) -> None:
        for idle in self._idle.values():
            while (conn := self._take(idle)) is not None:
                conn.close()
