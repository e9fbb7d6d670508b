"""Outgoing HTTP of the deliveries: POST message Bundles to organisations' endpoints.

Built on libcurl (pycurl): a POST costs a third of the interpreter time it took with the
standard library's ``http.client`` (measured: 35 against 110-130 us of CPU per POST of a
4 kB message to a local receiver; httpx cost ten times that), and every message is POSTed
once per receiving organisation. ``exchange`` runs lanes of requests side by side in one
thread (a libcurl multi handle; the interpreter lock is released while it waits), each
lane's requests one after another: before, each lane needed a thread of a pool, and the
threads took turns on the interpreter lock with the API's.

Connections are kept alive and reused per endpoint (scheme, host, port), by each thread's
client state: threads may share one ``HttpClient``. No redirects are followed, only http and
https are spoken, proxies from the environment are not used (as with ``http.client``), and
nothing is retried here except what libcurl itself sends again, once, on a new connection:
a request on a kept-alive connection that the server had closed before any answer came.
Retrying is the outbox's business. ``timeout`` bounds the whole exchange (connect, send,
answer). A header field with a line break in it (which would start another field) is not
sent, and an answer longer than ``max_answer`` bytes ends its transfer as an error: a
receiver answers with an acknowledgement, and the hub keeps each answer in memory.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from urllib.parse import urlsplit

import pycurl

_MAX_IDLE = 64  # kept-alive connections a thread keeps, over all endpoints
MAX_ANSWER_BYTES = 16 * 2**20  # a receiver's answer is an acknowledgement: a few kB
# A header field's name is a token; its value has no line breaks (they would end the field
# and start another: header injection).
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_WAIT_SLICE = 1.0  # seconds: the longest wait for any socket before libcurl looks again
_CA = ssl.get_default_verify_paths()
# An exchange's recheck is not asked again within this many seconds of its last answer (or of
# the exchange's start): a request starts at most this long after the caller's check held.
RECHECK_AFTER = 0.02


class HttpError(Exception):
    """The request got no answer (connection refused, reset, malformed response ...)."""


class HttpTimeout(HttpError):
    """No answer within the timeout."""


class HttpRefused(HttpError):
    """The request was not sent, and sending it unchanged never will be: its URL or a header
    field cannot be used (see ``url_problem``)."""


class HttpNotSent(HttpError):
    """The request was not sent: the caller's ``recheck`` stopped it before it started."""


# The characters a URL the hub sends to may hold: printable ASCII (RFC 3986 has no others).
_URL_TEXT = re.compile(r"[\x21-\x7e]+")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an address the hub POSTs to; None when it can. It must be an
    absolute http or https URL with a host (and, if any, a port of 1 to 65535), written in
    printable ASCII only (no spaces or control characters), as RFC 3986 has it: a host name
    with other letters in its IDNA form (``xn--...``), any other non-ASCII character
    percent-encoded (its UTF-8 bytes: ``%C3%A4`` for ``ä``). The hub does not convert: what
    it is given is what it sends to (libcurl cannot take other text). It holds no
    credentials (``user:password@``): a URL is shown (the console, a delivery's error), an
    Authorization variable's value never is."""
    if not _URL_TEXT.fullmatch(url):
        return ("not in printable ASCII: spaces, control and non-ASCII characters are not "
                "allowed (a host name in its IDNA form, xn--..., anything else percent-encoded)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port that is no number ...
        return "not a valid URL (its host or port)"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL (absolute, with a host)"
    if port == 0:
        return "not a valid URL (port 0)"
    if "@" in parts.netloc:  # (shown on the console and in a delivery's error: never sent)
        return ("a URL with credentials (user:password@) in it: an endpoint's go in the "
                "variable its authorizationEnv names (the Authorization header)")
    return None


# A URL's userinfo (RFC 3986 3.2.1: what comes before the last "@" of its authority).
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def shown_url(url: str) -> str:
    """``url`` as it may be shown (an error, a log line): credentials in it masked."""
    return _USERINFO.sub("***@", url, count=1)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    url: str
    status_code: int
    content: bytes
    # Seconds its Retry-After asks to wait (given in seconds or as an HTTP-date, as libcurl
    # reads it); 0: none, or one libcurl could not read.
    retry_after: float = 0.0

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


# ``exchange``'s recheck: the requests about to start, as (lane, index), to those not to send.
Recheck = Callable[[Sequence[tuple[int, int]]], Mapping[tuple[int, int], HttpError]]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A POST to make."""
    url: str
    content: bytes
    headers: dict[str, str]
    timeout: float  # seconds for the whole exchange


@dataclass(slots=True)
class _Transfer:
    handle: pycurl.Curl
    limit: int  # bytes of answer taken; a longer one ends the transfer
    request: HttpRequest | None = None
    body: BytesIO = field(default_factory=BytesIO)
    lane: int = 0
    index: int = 0
    too_long: bool = False

    def write(self, chunk: bytes) -> int | None:
        """libcurl's write callback: keep the chunk, or end the transfer (a count other
        than the chunk's length) once the answer is longer than the limit."""
        if self.body.tell() + len(chunk) > self.limit:
            self.too_long = True
            return 0
        self.body.write(chunk)
        return None


class _Thread:
    """One thread's libcurl state: its multi handle (which keeps the connections) and the
    easy handles it reuses."""

    def __init__(self, max_answer: int) -> None:
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, _MAX_IDLE)
        self.free: list[_Transfer] = []
        self.max_answer = max_answer

    def take(self, request: HttpRequest, lane: int, index: int) -> _Transfer:
        t = self.free.pop() if self.free else _Transfer(_new_handle(), self.max_answer)
        t.request, t.lane, t.index, t.too_long = request, lane, index, False
        t.body = BytesIO()
        h = t.handle
        try:
            h.setopt(pycurl.URL, request.url)
            h.setopt(pycurl.POSTFIELDS, request.content)
            # "Expect:" off: libcurl would ask for 100-continue before a large body.
            h.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in request.headers.items()]
                     + ["Expect:"])
            h.setopt(pycurl.TIMEOUT_MS, max(1, int(request.timeout * 1000)))
            h.setopt(pycurl.WRITEFUNCTION, t.write)
            self.multi.add_handle(h)
        except BaseException:  # not in the multi: the handle is free for the next request
            t.request = None
            self.free.append(t)
            raise
        return t

    def give_back(self, t: _Transfer) -> None:
        self.multi.remove_handle(t.handle)
        t.request = None
        self.free.append(t)

    def close(self) -> None:
        for t in self.free:
            t.handle.close()
        self.free.clear()
        self.multi.close()


def _new_handle() -> pycurl.Curl:
    h = pycurl.Curl()
    h.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
    h.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    h.setopt(pycurl.FOLLOWLOCATION, 0)
    h.setopt(pycurl.PROXY, "")  # not the environment's proxy
    if _CA.cafile:
        h.setopt(pycurl.CAINFO, _CA.cafile)
    if _CA.capath:
        h.setopt(pycurl.CAPATH, _CA.capath)
    return h


def _refused(request: HttpRequest) -> HttpRefused | None:
    """Why the request is not sent, if it is not."""
    problem = url_problem(request.url)
    if problem is not None:
        return HttpRefused(f"{shown_url(request.url)[:300]!r} cannot be sent to: {problem}")
    for name, value in request.headers.items():
        if not _NAME.fullmatch(name) or _BAD_VALUE.search(value):
            return HttpRefused(f"The header {name!r} is not a valid HTTP header field (a line "
                               "break or a character a field name cannot have)")
    return None


class HttpClient:
    """``max_answer``: the longest answer body taken, in bytes; a longer one is an
    ``HttpError`` (its request's transfer ends there)."""

    def __init__(self, max_answer: int = MAX_ANSWER_BYTES) -> None:
        self._max_answer = max_answer
        self._local = threading.local()
        self._all: list[_Thread] = []  # every thread's state, closed by close()
        self._lock = threading.Lock()
        # When a request last finished (monotonic): a lane of slow answers shows progress.
        self.progress_at = float("-inf")
        # An exchange's ``recheck`` is asked at most this often (seconds).
        self.recheck_after = RECHECK_AFTER

    def _mine(self) -> _Thread:
        state: _Thread | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _Thread(self._max_answer)
            with self._lock:
                self._all.append(state)
        return state

    def post(self, url: str, *, content: bytes, headers: dict[str, str],
             timeout: float) -> HttpResponse:
        """One POST; raises ``HttpError`` (``HttpTimeout``) when no answer came."""
        result = self.exchange([[HttpRequest(url, content, headers, timeout)]])[0][0]
        if isinstance(result, HttpError):
            raise result
        return result

    def exchange(self, lanes: Sequence[Sequence[HttpRequest]], *,
                 recheck: Recheck | None = None) -> list[list[HttpResponse | HttpError]]:
        """POST every lane's requests, a lane's one after another (the next once the
        previous is answered or has failed), the lanes side by side. Each request's answer,
        or the error that stands for it (``HttpTimeout``, ``HttpError``; ``HttpRefused``
        for a request that cannot be sent, which fails alone: the others go on), in the
        lanes' order.

        ``recheck``, when given, is asked about the requests a lane is about to start after
        an earlier one of it finished (``(lane, index)`` pairs, all that start at one moment
        at once), and answers those not to send with the error that stands for them
        (``HttpNotSent``): what the caller checked before the exchange may no longer hold by
        then. It is not asked when less than ``recheck_after`` seconds passed since it was
        last asked (or since the exchange began)."""
        state = self._mine()
        results: list[list[HttpResponse | HttpError | None]] = [[None] * len(lane)
                                                                for lane in lanes]
        running: dict[pycurl.Curl, _Transfer] = {}
        checked = [time.monotonic()]

        def start(pending: list[tuple[int, int]], check: bool) -> None:
            """Start each lane's request ``(lane, index)``, or the lane's next one that can
            be sent."""
            pending = [(lane, i) for lane, i in pending if i < len(lanes[lane])]
            stopped: Mapping[tuple[int, int], HttpError] = {}
            if check and pending and recheck is not None and \
                    time.monotonic() - checked[0] >= self.recheck_after:
                stopped = recheck(pending)
                checked[0] = time.monotonic()
            for lane, index in pending:
                while index < len(lanes[lane]):
                    request = lanes[lane][index]
                    refused = stopped.get((lane, index)) or _refused(request)
                    if refused is None:
                        try:
                            t = state.take(request, lane, index)
                        except (pycurl.error, UnicodeError, TypeError, ValueError) as exc:
                            refused = HttpRefused(f"libcurl cannot send to "
                                                  f"{request.url[:300]!r}: {exc}")
                        else:
                            running[t.handle] = t
                            break
                    results[lane][index] = refused
                    index += 1

        def finish(handle: pycurl.Curl, result: HttpResponse | HttpError) -> tuple[int, int]:
            t = running.pop(handle)
            self.progress_at = time.monotonic()
            results[t.lane][t.index] = result
            state.give_back(t)
            return t.lane, t.index + 1  # the lane's next request

        try:
            start([(lane, 0) for lane in range(len(lanes))], check=False)
            while running:
                while state.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                finished = 0
                following: list[tuple[int, int]] = []
                while True:
                    left, ok, failed = state.multi.info_read()
                    for h in ok:
                        t = running.get(h)
                        if t is None:  # not this exchange's (never expected): let it go
                            state.multi.remove_handle(h)
                            continue
                        following.append(finish(h, HttpResponse(
                            t.request.url,  # type: ignore[union-attr]
                            h.getinfo(pycurl.RESPONSE_CODE), t.body.getvalue(),
                            h.getinfo(pycurl.RETRY_AFTER))))
                    for h, errno, message in failed:
                        t = running.get(h)
                        if t is None:
                            state.multi.remove_handle(h)
                            continue
                        request: HttpRequest = t.request  # type: ignore[assignment]
                        following.append(finish(
                            h, HttpError(f"The answer from {request.url} is longer than "
                                         f"{t.limit} bytes") if t.too_long else
                            _error(request, errno, message)))
                    finished += len(ok) + len(failed)
                    if not left:
                        break
                if following:  # the lanes' next requests, checked again together
                    start(following, check=True)
                if running and not finished:
                    # Nothing finished (so nothing new to start): wait for a socket, or
                    # for as long as libcurl asks (a timeout of its own), at most a slice.
                    wait = state.multi.timeout()
                    if wait != 0:
                        state.multi.select(_WAIT_SLICE if wait < 0
                                           else min(_WAIT_SLICE, wait / 1000))
        finally:
            for t in running.values():  # interrupted: nothing half-done stays in the multi
                state.give_back(t)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close every thread's connections (when no thread is using the client)."""
        with self._lock:
            states, self._all = self._all, []
        for state in states:
            state.close()
        self._local = threading.local()


def _error(request: HttpRequest, errno: int, message: str) -> HttpError:
    if errno == pycurl.E_OPERATION_TIMEDOUT:
        return HttpTimeout(f"No answer from {request.url} within {request.timeout:g} s")
    return HttpError(f"{message} (libcurl error {errno})")
