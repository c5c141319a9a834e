"""HTTP for the OpenAI-compatible caption backend, standard library only: one deadline per request
(connect, upload and the whole answer), bounded answers, no API key across a redirect to another
host, and failures as one-line reasons (``RequestFailed`` and its kinds)."""

from __future__ import annotations

import http.client
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("caption")


READ_CHUNK = 64 * 1024


class RequestFailed(Exception):
    """A request got no usable answer; the message is the one-line reason."""


class TransportError(RequestFailed):
    """The server was not reached or did not finish answering (refused, DNS, reset, timeout).
    Retried, and counted by the circuit breaker."""


class HTTPStatusError(RequestFailed):
    """The server answered with an error status."""

    def __init__(self, code: int, detail: str):
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code

    @property
    def retryable(self) -> bool:
        """Overload (429) and server errors (5xx) may pass; a bad request does not get better."""
        return self.code >= 500 or self.code == 429


class BadAnswer(RequestFailed):
    """The server answered, but not with what was asked (too large, not JSON, wrong shape)."""


def one_line(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


class _DeadlineReader(io.RawIOBase):
    """The receiving side of a :class:`_DeadlineSocket`: each read may only wait for the time left."""

    def __init__(self, raw, arm):
        self._raw = raw
        self._arm = arm

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._arm()
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose every send and receive gets the time left before ``deadline``
    (``time.monotonic()``) as its timeout; once it has passed, they raise ``TimeoutError``.

    A per-operation socket timeout alone lets a server that trickles one byte a second keep a
    request alive forever; with this the whole request ends at the deadline."""

    def __init__(self, sock, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data) -> None:
        self._arm()
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        if "r" not in mode:
            raise ValueError(f"only reading through a deadline socket, not mode {mode!r}")
        return io.BufferedReader(_DeadlineReader(self._sock.makefile("rb", buffering=0), self._arm))

    def close(self) -> None:
        self._sock.close()  # the real close waits until the reader made by makefile is closed too

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _deadline_connection(base: type, deadline: float) -> type:
    """``base`` (HTTPConnection or HTTPSConnection) whose socket keeps to ``deadline``."""

    class DeadlineConnection(base):
        def connect(self):
            super().connect()  # HTTPS: the TLS handshake included
            self.sock = _DeadlineSocket(self.sock, deadline)

    return DeadlineConnection


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_deadline_connection(http.client.HTTPConnection, self.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_deadline_connection(http.client.HTTPSConnection, self.deadline), req,
                            context=self._context)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port filled in for http and https."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class SameOriginAuthRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects of GET requests, except that ``Authorization`` is dropped when the
    redirect leads to another scheme, host or port: the API key only goes to the configured server.

    A request with a body (a caption request) is not redirected at all: urllib would turn a
    302/303 into a GET without the clip, whose answer would be a caption of nothing; the
    redirect is then an HTTP error of that clip."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.data is not None:
            return None  # urllib raises the HTTPError
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(new.full_url) != origin(req.full_url):
            if new.has_header("Authorization"):
                log.warning("%s redirects to %s: the Authorization header is not sent there",
                            req.full_url, new.full_url)
            new.remove_header("Authorization")
        return new


def _read_bounded(response, max_bytes: int) -> bytes:
    """The body of ``response``, or :class:`BadAnswer` when it is longer than ``max_bytes``."""
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise BadAnswer(f"response larger than {max_bytes} bytes (Content-Length {int(declared)})")
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = response.read(min(READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise BadAnswer(f"response larger than {max_bytes} bytes")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The start of an error answer's body, on one line (empty when it cannot be read)."""
    try:
        return one_line(exc.read(4096).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException, ValueError):
        return ""


def _transport_reason(exc: BaseException, timeout_s: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no complete answer within timeout_s={timeout_s:g} s"
    return f"request failed: {one_line(reason) or type(reason).__name__}"


def fetch(url: str, headers: dict, data: bytes | None, timeout_s: float, max_bytes: int) -> bytes:
    """GET (or with ``data``, POST) ``url`` and return the body of its answer.

    The request as a whole ends after ``timeout_s``, the body is read up to ``max_bytes``, and
    ``Authorization`` is not forwarded along a redirect to another host. Raises
    :class:`TransportError`, :class:`HTTPStatusError`, :class:`BadAnswer` or (a URL urllib
    cannot open) :class:`RequestFailed`.
    """
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(
        _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline), SameOriginAuthRedirectHandler())
    try:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        with opener.open(req, timeout=timeout_s) as response:
            return _read_bounded(response, max_bytes)
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if 300 <= exc.code < 400:
            detail = f"redirect to {one_line(exc.headers.get('Location', '?'))} not followed"
        exc.close()
        raise HTTPStatusError(exc.code, detail) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise TransportError(_transport_reason(exc, timeout_s)) from None
    except ValueError as exc:  # not a URL urllib can open
        raise RequestFailed(f"bad request URL: {one_line(exc)}") from None


def decode_json(raw: bytes):
    """The JSON value in ``raw``; :class:`BadAnswer` when it is not UTF-8 JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        start = one_line(repr(raw[:120]), 150)
        raise BadAnswer(f"malformed answer: not JSON ({one_line(exc, 120)}): {start}") from None


def json_kind(value) -> str:
    """What a decoded JSON value is, in JSON's words ("null", "a number", "an array" ...)."""
    if value is None:
        return "null"
    names = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
             (dict, "an object"))
    return next((name for types, name in names if isinstance(value, types)), type(value).__name__)
