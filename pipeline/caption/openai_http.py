"""Caption backend: an OpenAI-compatible chat completions endpoint (a vLLM server, say).

Each clip is one request with the same prompt the transformers backend uses. Videos are sent
as our own frame sampling re-encoded into a small H.264 mp4 (``video_url`` data URL): the
server sees exactly the frames the other backend would, and a 10 s 4K clip uploads as a few
hundred KB. Photos go as a PNG ``image_url`` data URL. Requests run ``concurrency`` at a time
(a serving engine batches them itself); only the standard library is used.

vLLM samples a fixed number of frames from a video unless told otherwise; to have it use
every frame we send, start it with ``--media-io-kwargs '{"video": {"num_frames": -1}}'``
(see README). ``extra_body`` is merged into every request for such server-specific options.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
import urllib.error
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


@dataclass
class EndpointConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "VLP_CAPTION_API_KEY"  # name of the env var holding the key ("" = none)
    timeout_s: float = 300.0
    concurrency: int = 8
    retries: int = 2
    extra_body: dict = field(default_factory=dict)


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


def _headers(endpoint: EndpointConfig) -> dict:
    headers = {"Content-Type": "application/json"}
    env = endpoint.api_key_env
    if env and os.environ.get(env):
        headers["Authorization"] = f"Bearer {os.environ[env]}"
    return headers


def endpoint_label(endpoint: EndpointConfig) -> str:
    """``openai:<model>@<fingerprint>``, the fingerprint taken from the server's /models entry
    (its id, weights root and context length): a server restarted on other weights is a new model."""
    url = endpoint.base_url.rstrip("/") + "/models"
    req = urllib.request.Request(url, headers=_headers(endpoint), method="GET")
    try:
        with urllib.request.urlopen(req, timeout=min(endpoint.timeout_s, 30.0)) as r:
            info = json.loads(r.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"{url}: caption endpoint not reachable ({exc})") from exc
    served = {m.get("id"): m for m in info.get("data", []) if isinstance(m, dict)}
    if endpoint.model_name not in served:
        raise RuntimeError(f"{url}: model '{endpoint.model_name}' is not served (serves {sorted(k for k in served if k)})")
    m = served[endpoint.model_name]
    fingerprint = sha256_json({"id": m.get("id"), "root": m.get("root"), "max_model_len": m.get("max_model_len")})
    return f"openai:{endpoint.model_name}@{fingerprint[:16]}"


class OpenAICaptioner:
    def __init__(self, endpoint: EndpointConfig, generation: GenerationParams, label: str = ""):
        self.endpoint = endpoint
        self.generation = generation
        self.base_url = endpoint.base_url.rstrip("/")
        self.label = label or f"openai:{endpoint.model_name}"
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
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.endpoint.retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 30.0))
            req = urllib.request.Request(self.base_url + "/chat/completions", data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.endpoint.timeout_s) as r:
                    answer = json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code < 500 and exc.code != 429:
                    break  # a bad request does not get better by retrying
                continue
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"request failed: {exc}"
                continue
            try:
                text = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                return CaptionOutput(error=f"malformed answer: {json.dumps(answer)[:200]}")
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
            return CaptionOutput(text=text, new_tokens=tokens)
        return CaptionOutput(error=last)

    def _one(self, item: CaptionItem) -> CaptionOutput:
        try:
            body = self.request_body(item)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            return CaptionOutput(error=f"cannot encode the request: {exc}")
        return self._post(body)

    def generate(self, items: list[CaptionItem]) -> list[CaptionOutput]:
        workers = max(1, min(self.endpoint.concurrency, len(items)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._one, items))
