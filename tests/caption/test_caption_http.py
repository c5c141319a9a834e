"""The OpenAI-compatible caption backend against a local chat-completions server that answers
with the tiny Qwen2.5-VL: the whole request/response path (data URLs, auth, retries, failures)."""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from pipeline.caption.backends.base import CaptionItem, GenerationParams
from pipeline.caption.backends.hf import TransformersCaptioner
from pipeline.caption.media import FrameSampling, load_media, sample_indices
from pipeline.caption.prompts import IMAGE_PROMPT, VIDEO_PROMPT
from pipeline.caption.stage import run_caption
from pipeline.core.clip import ClipSpan
from pipeline.models.tiny.vlm import tiny_vlm_dir
from tests.helpers.caption_helpers import cut_sample_clips, dataset

MODEL = "tiny-vl"


class TinyServer(ThreadingHTTPServer):
    """``/v1/models`` and ``/v1/chat/completions``, answered by the tiny model (one request at a time)."""

    def __init__(self, model_dir: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.model_dir = model_dir
        self.captioner = TransformersCaptioner(
            str(model_dir), GenerationParams(), FrameSampling(max_pixels=1 << 20, image_max_pixels=1 << 20), device="cpu")
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # what each chat request carried
        self.mode = "model"  # model | boilerplate | error500

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def answer(self, body: dict, headers) -> tuple[int, dict]:
        parts = body["messages"][0]["content"]
        media_part = next(p for p in parts if p["type"] in ("video_url", "image_url"))
        prompt = next(p["text"] for p in parts if p["type"] == "text")
        url = media_part[media_part["type"]]["url"]
        head, data = url.split(",", 1)
        record = {"type": media_part["type"], "mime": head, "prompt": prompt, "auth": headers.get("Authorization"),
                  "model": body["model"], "max_tokens": body["max_tokens"], "min_tokens": body.get("min_tokens")}
        with self.lock:
            self.requests.append(record)
            if self.mode == "error500":
                return 500, {"error": {"message": "engine overloaded"}}
            if self.mode == "boilerplate":
                return 200, {"choices": [{"message": {"role": "assistant", "content": "The video shows"}}],
                             "usage": {"completion_tokens": 3}}
            with tempfile.TemporaryDirectory() as tmp:
                kind = "video" if media_part["type"] == "video_url" else "image"
                path = Path(tmp) / ("clip.mp4" if kind == "video" else "photo.png")
                path.write_bytes(base64.b64decode(data))
                n, fps = 1, 0.0
                if kind == "video":
                    with av.open(str(path)) as c:
                        s = c.streams.video[0]
                        fps = float(s.average_rate)
                        n = sum(1 for _ in c.decode(s))
                    record["frames"] = n
                everything = FrameSampling(fps=0, max_frames=0, max_pixels=1 << 20, image_max_pixels=1 << 20)
                media = load_media(ClipSpan(str(path), kind, 0, n), n, fps, everything)
                self.captioner.generation = GenerationParams(
                    max_new_tokens=body["max_tokens"], min_new_tokens=body.get("min_tokens") or 0)
                out = self.captioner.generate([CaptionItem("request", media, prompt)])[0]
        return 200, {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": "length"}],
                     "usage": {"completion_tokens": out.new_tokens}}


class Handler(BaseHTTPRequestHandler):
    server: TinyServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, obj: dict) -> None:
        blob = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "root": str(self.server.model_dir), "max_model_len": 4096}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(*self.server.answer(body, self.headers))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = TinyServer(tiny_vlm_dir(cache_dir=tmp_path_factory.getbasetemp() / "tiny-models"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return cut_sample_clips(tmp_path_factory.mktemp("caption-http-clips"))


def params(server, **over) -> dict:
    p = {"backend": "openai", "fps": 4.0, "max_frames": 4, "max_pixels": 56 * 112, "image_max_pixels": 112 * 112,
         "max_new_tokens": 20, "min_new_tokens": 16, "trigger": "sks",
         "openai": {"base_url": server.base_url, "model_name": MODEL, "api_key_env": "VLP_TEST_CAPTION_KEY",
                    "concurrency": 2, "retries": 1, "timeout_s": 60}}
    p.update(over)
    return p


def run(tmp_path, rows, p):
    out = tmp_path / "out"
    return run_caption(dataset(rows), p, out / "captions.parquet", out / "captions.parts",
                       out / "metrics" / "caption.json", tmp_path / "edits.csv")


def test_http_backend_captions_through_the_server(tmp_path, server, clips, monkeypatch):
    monkeypatch.setenv("VLP_TEST_CAPTION_KEY", "secret-key")
    server.requests.clear()
    server.mode = "model"
    table, metrics = run(tmp_path, clips, params(server))

    assert table["status"].to_list() == ["ok"] * 4
    assert all(c.startswith("sks, ") and len(c) > 5 for c in table["caption"].to_list())
    assert all(m.startswith(f"openai:{MODEL}@") for m in table["model"].to_list())
    assert metrics["backend"] == "openai" and metrics["tokens_per_s"] > 0 and metrics["new_tokens"] >= 64
    reqs = server.requests
    assert sorted(r["type"] for r in reqs) == ["image_url", "video_url", "video_url", "video_url"]
    assert all(r["auth"] == "Bearer secret-key" and r["model"] == MODEL for r in reqs)
    assert all(r["max_tokens"] == 20 and r["min_tokens"] == 16 for r in reqs)
    videos = [r for r in reqs if r["type"] == "video_url"]
    assert all(r["mime"] == "data:video/mp4;base64" and r["prompt"] == VIDEO_PROMPT for r in videos)
    image = next(r for r in reqs if r["type"] == "image_url")
    assert image["mime"] == "data:image/png;base64" and image["prompt"] == IMAGE_PROMPT
    # The server got exactly our frame sampling of each clip (not the whole clip).
    expected = sorted(len(sample_indices(c["n_frames"], c["fps"], 4.0, 4)) for c in clips if c["kind"] == "video")
    assert sorted(r["frames"] for r in videos) == expected

    # Resume works the same way: nothing is sent again.
    server.requests.clear()
    _, metrics2 = run(tmp_path, clips, params(server))
    assert server.requests == [] and metrics2["reused"] == 4


def test_http_failures_become_caption_failed_rows(tmp_path, server, clips):
    rows = clips[:1]
    server.requests.clear()
    server.mode = "error500"
    table, _ = run(tmp_path / "a", rows, params(server))
    row = table.row(0, named=True)
    assert row["status"] == "caption_failed" and "HTTP 500" in row["reason"] and "engine overloaded" in row["reason"]
    assert len(server.requests) == 2  # one retry

    server.mode = "boilerplate"
    table, _ = run(tmp_path / "b", rows, params(server))
    row = table.row(0, named=True)
    assert row["status"] == "caption_failed" and row["caption"] == "" and "empty caption after clean-up" in row["reason"]

    # A failed clip is retried on the next run, and succeeds once the server answers.
    server.mode = "model"
    table, metrics = run(tmp_path / "b", rows, params(server))
    assert table["status"].to_list() == ["ok"] and metrics["captioned"] == 1


def test_unreachable_endpoint_is_a_clear_error(tmp_path, clips):
    p = {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:9/v1", "model_name": MODEL, "timeout_s": 5}}
    with pytest.raises(RuntimeError, match="endpoint not reachable"):
        run(tmp_path, clips[:1], p)
