"""Caption backend: an OpenAI-compatible chat completions endpoint (a vLLM server, say).

Each clip is one request with the same prompt the transformers backend uses. Videos are sent
as our own frame sampling re-encoded into a small H.264 mp4 (``video_url`` data URL): the
server sees exactly the frames the other backend would, and a 10 s 4K clip uploads as a few
hundred KB. Photos go as a PNG ``image_url`` data URL. Requests run ``concurrency`` at a time
(a serving engine batches them itself); only the standard library is used.

vLLM samples a fixed number of frames from a video unless told otherwise; to have it use
every frame we send, start it with ``--media-io-kwargs '{"video": {"num_frames": -1}}'``
(see README). ``extra_body`` is merged into every request for such server-specific options.

A bad server never stops the stage nor hangs it: every request has one deadline
(``timeout_s``, the whole request, the answer's body included), answers are read up to
``max_response_bytes``, an answer that is not the expected JSON is a failure of that clip,
and after ``circuit_failures`` consecutive connection failures or timeouts the remaining clips
fail at once instead of each waiting for its retries (a circuit breaker). Every failure is a
one-line ``CaptionOutput.error``, which the runner turns into a ``caption_failed`` row. The
API key is never sent along a redirect to another host.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from pipeline.caption.backend import CaptionItem, CaptionOutput, GenerationParams
from pipeline.caption.media import Media
from pipeline.fsutil import sha256_json

log = logging.getLogger("caption")

READ_CHUNK = 64 * 1024
MODELS_TIMEOUT_S = 30.0  # the /models query is small: it never waits longer than this


@dataclass
class EndpointConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "VLP_CAPTION_API_KEY"  # name of the env var holding the key ("" = none)
    timeout_s: float = 300.0  # one request, start to end (connect, upload, answer body)
    concurrency: int = 8
    retries: int = 2
    extra_body: dict = field(default_factory=dict)
    max_response_bytes: int = 4 * 1024 * 1024  # a longer answer is a failure of its clip
    circuit_failures: int = 3  # consecutive connection failures/timeouts that stop all requests (0 = never)


# --- request failures -------------------------------------------------------------------------


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


# --- a deadline for the whole request ---------------------------------------------------------


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


# --- redirects keep the API key on its host -----------------------------------------------------


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


# --- one request --------------------------------------------------------------------------------


def _headers(endpoint: EndpointConfig) -> dict:
    headers = {"Content-Type": "application/json"}
    env = endpoint.api_key_env
    if env and os.environ.get(env):
        headers["Authorization"] = f"Bearer {os.environ[env]}"
    return headers


def _read_bounded(response, max_bytes: int) -> bytes:
    """The body of ``response``, or :class:`BadAnswer` when it is longer than ``max_bytes``."""
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise BadAnswer(f"response larger than {max_bytes} bytes (Content-Length {int(declared)})")
    chunks, total = [], 0
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


def parse_chat_answer(answer) -> CaptionOutput:
    """The text and token count of a chat completion, or a failure saying what is wrong with it."""
    snippet = one_line(json.dumps(answer), 200)
    if not isinstance(answer, dict):
        return CaptionOutput(error=f"malformed answer: the answer is {json_kind(answer)}, not an object: {snippet}")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return CaptionOutput(error=f"malformed answer: no choices: {snippet}")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return CaptionOutput(error=f"malformed answer: choices[0] has no message: {snippet}")
    content = message.get("content")
    if not isinstance(content, str):
        return CaptionOutput(error=f"malformed answer: message content is {json_kind(content)}, not text: {snippet}")
    return CaptionOutput(text=content, new_tokens=completion_tokens(answer))


def completion_tokens(answer: dict) -> int:
    """``usage.completion_tokens`` when it is a count, else 0 (it only feeds the throughput)."""
    usage = answer.get("usage")
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0


# --- the served model's fingerprint ---------------------------------------------------------------


def served_models(info) -> dict[str, dict] | None:
    """id -> entry of a ``/models`` answer; None when the answer is not shaped like one."""
    if not isinstance(info, dict) or not isinstance(info.get("data"), list):
        return None
    return {m["id"]: m for m in info["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)}


def endpoint_label(endpoint: EndpointConfig) -> str:
    """``openai:<model>@<fingerprint>``, the fingerprint taken from the server's /models entry
    (its id, weights root and context length): a server restarted on other weights is a new model.

    A server that cannot be reached, or answers with an error status, is an error; one whose
    /models answer is malformed gets an ``unverified-`` fingerprint of the answer itself (logged),
    so its captions are only reused while the server keeps answering exactly the same."""
    url = endpoint.base_url.rstrip("/") + "/models"
    timeout = min(endpoint.timeout_s, MODELS_TIMEOUT_S)
    try:
        raw = fetch(url, _headers(endpoint), None, timeout, endpoint.max_response_bytes)
    except BadAnswer as exc:  # larger than max_response_bytes
        return _unverified_label(endpoint, url, str(exc), b"")
    except RequestFailed as exc:
        raise RuntimeError(f"{url}: caption endpoint not reachable ({exc})") from exc
    try:
        served, why = served_models(decode_json(raw)), "not a model list"
    except BadAnswer as exc:
        served, why = None, str(exc)
    if served is None:
        return _unverified_label(endpoint, url, why, raw)
    if endpoint.model_name not in served:
        raise RuntimeError(f"{url}: model '{endpoint.model_name}' is not served (serves {sorted(served)})")
    m = served[endpoint.model_name]
    fingerprint = sha256_json({"id": m.get("id"), "root": m.get("root"), "max_model_len": m.get("max_model_len")})
    return f"openai:{endpoint.model_name}@{fingerprint[:16]}"


def _unverified_label(endpoint: EndpointConfig, url: str, why: str, raw: bytes) -> str:
    digest = hashlib.sha256(raw or why.encode("utf-8")).hexdigest()[:12]
    label = f"openai:{endpoint.model_name}@unverified-{digest}"
    log.warning("%s: malformed /models answer (%s); model not verified, labelled %s", url, one_line(why, 160), label)
    return label


# --- the circuit breaker ----------------------------------------------------------------------------


class CircuitBreaker:
    """Stops sending to a server that is down.

    ``threshold`` consecutive transport failures (connection refused, DNS failure, reset,
    timeout) open the circuit: :meth:`open_reason` is then the one-line reason every remaining
    request fails with, without being sent. Any answer from the server closes it again.
    ``threshold`` 0 never opens it. Safe to share between threads.
    """

    def __init__(self, threshold: int):
        self.threshold = max(0, int(threshold))
        self._lock = threading.Lock()
        self._failures = 0
        self._last = ""
        self._opened = threading.Event()

    def open_reason(self) -> str:
        """Empty while requests may go out; else why they fail."""
        with self._lock:
            if not self._opened.is_set():
                return ""
            return (f"caption server unreachable (circuit open after {self.threshold} consecutive failures): "
                    f"{self._last}")

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self._last = reason
            opening = self.threshold > 0 and self._failures >= self.threshold and not self._opened.is_set()
            if opening:
                self._opened.set()
        if opening:
            log.warning("caption server unreachable after %d consecutive failures (%s): the remaining clips fail "
                        "without being sent", self.threshold, reason)

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened.clear()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (a retry's back-off), waking early when the circuit opens."""
        self._opened.wait(seconds)


# --- the backend ---------------------------------------------------------------------------------------


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """Frames (T, H, W, 3) uint8 as an H.264 mp4 at ``fps`` (near-lossless), in memory."""
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1000) if fps > 0 else Fraction(1)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.height, s.width = frames.shape[1], frames.shape[2]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "12", "preset": "veryfast"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue()


def media_part(media: Media) -> dict:
    """The message content part that carries the clip or photo."""
    if media.kind == "image":
        buf = io.BytesIO()
        media.image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return {"type": "image_url", "image_url": {"url": url}}
    url = "data:video/mp4;base64," + base64.b64encode(encode_mp4(media.frames, media.sampled_fps)).decode("ascii")
    return {"type": "video_url", "video_url": {"url": url}}


class OpenAICaptioner:
    def __init__(self, endpoint: EndpointConfig, generation: GenerationParams, label: str = ""):
        self.endpoint = endpoint
        self.generation = generation
        self.base_url = endpoint.base_url.rstrip("/")
        self.label = label or f"openai:{endpoint.model_name}"
        self.breaker = CircuitBreaker(endpoint.circuit_failures)
        log.info("caption endpoint %s, model %s, %d requests at a time", self.base_url, endpoint.model_name, endpoint.concurrency)

    def _headers(self) -> dict:
        return _headers(self.endpoint)

    def request_body(self, item: CaptionItem) -> dict:
        g = self.generation
        body = {
            "model": self.endpoint.model_name,
            "messages": [{"role": "user", "content": [media_part(item.media), {"type": "text", "text": item.prompt}]}],
            "max_tokens": g.max_new_tokens,
            "temperature": g.temperature if g.do_sample else 0.0,
        }
        if g.do_sample:
            body.update(top_p=g.top_p, seed=g.seed)
        if g.min_new_tokens:
            body["min_tokens"] = g.min_new_tokens  # vLLM's extension
        body.update(self.endpoint.extra_body)
        return body

    def _post(self, body: dict) -> CaptionOutput:
        """Send one chat request, retrying transport failures, 429 and 5xx, until the circuit opens."""
        data = json.dumps(body).encode("utf-8")
        url = self.base_url + "/chat/completions"
        last = ""
        for attempt in range(self.endpoint.retries + 1):
            if attempt:
                self.breaker.wait(min(2.0**attempt, 30.0))
            blocked = self.breaker.open_reason()
            if blocked:
                return CaptionOutput(error=blocked)
            try:
                raw = fetch(url, self._headers(), data, self.endpoint.timeout_s, self.endpoint.max_response_bytes)
            except TransportError as exc:
                self.breaker.record_failure(str(exc))
                last = str(exc)
                continue
            except HTTPStatusError as exc:
                self.breaker.record_success()  # the server is up, it just said no
                last = str(exc)
                if not exc.retryable:
                    break
                continue
            except BadAnswer as exc:
                self.breaker.record_success()
                return CaptionOutput(error=str(exc))
            except RequestFailed as exc:
                return CaptionOutput(error=str(exc))
            self.breaker.record_success()
            try:
                return parse_chat_answer(decode_json(raw))
            except BadAnswer as exc:
                return CaptionOutput(error=str(exc))
        return CaptionOutput(error=last)

    def _one(self, item: CaptionItem) -> CaptionOutput:
        blocked = self.breaker.open_reason()
        if blocked:
            return CaptionOutput(error=blocked)  # not even encoded
        try:
            body = self.request_body(item)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            return CaptionOutput(error=f"cannot encode the request: {one_line(exc)}")
        try:
            return self._post(body)
        except Exception as exc:  # noqa: BLE001 - one clip's surprise must not fail its batch
            return CaptionOutput(error=f"backend error: {type(exc).__name__}: {one_line(exc)}")

    def generate(self, items: list[CaptionItem]) -> list[CaptionOutput]:
        workers = max(1, min(self.endpoint.concurrency, len(items)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._one, items))
