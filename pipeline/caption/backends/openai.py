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
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from pipeline.caption.backends.base import CaptionItem, CaptionOutput, GenerationParams
from pipeline.caption.backends.circuit import CircuitBreaker
from pipeline.caption.backends.http import (
    BadAnswer,
    HTTPStatusError,
    RequestFailed,
    TransportError,
    decode_json,
    fetch,
    json_kind,
    one_line,
)
from pipeline.caption.media import Media
from pipeline.core.fs import sha256_json

log = logging.getLogger("caption")

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


# --- a deadline for the whole request ---------------------------------------------------------


# --- redirects keep the API key on its host -----------------------------------------------------


# --- one request --------------------------------------------------------------------------------


def _headers(endpoint: EndpointConfig) -> dict:
    headers = {"Content-Type": "application/json"}
    env = endpoint.api_key_env
    if env and os.environ.get(env):
        headers["Authorization"] = f"Bearer {os.environ[env]}"
    return headers


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
        assert media.image is not None  # an image's Media always has its photo (load_media)
        buf = io.BytesIO()
        media.image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return {"type": "image_url", "image_url": {"url": url}}
    assert media.frames is not None  # a video's Media always has its frames (load_media)
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
