"""A bad caption server never crashes or hangs the caption stage: oversized, trickled, malformed
and redirected answers, a server that is down (circuit breaker). Bad edits: test_caption_edits.py."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from pipeline.caption.backends.base import CaptionItem, GenerationParams
from pipeline.caption.backends.openai import (
    EndpointConfig,
    OpenAICaptioner,
    endpoint_label,
)
from pipeline.caption.media import Media
from pipeline.caption.stage import run_caption
from tests.helpers.caption_helpers import dataset, dataset_row

MODEL = "tiny-vl"
MiB = 1024 * 1024


# --- a scripted local server ------------------------------------------------------------------------


class ScriptedServer(ThreadingHTTPServer):
    """Answers each (method, path) with a route function set by the test; records every request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.routes: dict[tuple[str, str], object] = {("GET", "/v1/models"): models_route}
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set at teardown: trickling / stalling routes end

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def record(self, method: str, path: str, auth: str | None) -> int:
        """Record a request; its 0-based number."""
        with self.lock:
            self.seen.append((method, path, auth))
            return len(self.seen) - 1

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.seen if m == method)


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.number = self.server.record(method, self.path, self.headers.get("Authorization"))
        route = self.server.routes.get((method, self.path)) or self.server.routes.get((method, "*"))
        try:
            if route is None:
                send_json(self, 404, {"error": {"message": f"no route {method} {self.path}"}})
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


def send_bytes(h: ScriptedHandler, code: int, blob: bytes, with_length: bool = True) -> None:
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    if with_length:
        h.send_header("Content-Length", str(len(blob)))
    h.end_headers()
    h.wfile.write(blob)


def send_json(h: ScriptedHandler, code: int, obj) -> None:
    send_bytes(h, code, json.dumps(obj).encode())


def models_route(h: ScriptedHandler) -> None:
    send_json(h, 200, {"object": "list", "data": [{"id": MODEL, "root": "/weights/tiny", "max_model_len": 4096}]})


def chat_answer(content) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"completion_tokens": 5}}


def answer_with(obj):
    """A route answering 200 with ``obj`` (JSON) or ``obj`` itself when it is bytes."""
    blob = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return lambda h: send_bytes(h, 200, blob)


def redirect_to(url: str, code: int = 307):
    def route(h: ScriptedHandler) -> None:
        h.send_response(code)
        h.send_header("Location", url)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


@pytest.fixture
def server():
    yield from serve()


@pytest.fixture
def other_server():
    yield from serve()


def serve():
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def items(n: int) -> list[CaptionItem]:
    return [CaptionItem(f"{i:016x}", Media("image", image=Image.new("RGB", (8, 8), (i, 0, 0))), "Describe.")
            for i in range(n)]


def captioner(base_url: str, **over) -> OpenAICaptioner:
    settings = {"base_url": base_url, "model_name": MODEL, "api_key_env": "", "timeout_s": 20.0,
                "concurrency": 1, "retries": 0}
    settings.update(over)
    return OpenAICaptioner(EndpointConfig(**settings), GenerationParams(max_new_tokens=8))


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line(error: str) -> None:
    assert error and "\n" not in error and len(error) < 500, error


# --- response size and deadline ----------------------------------------------------------------------


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "until-close"])
def test_oversized_answer_fails_its_clip(server, with_length):
    big = json.dumps(chat_answer("x" * (10 * MiB))).encode()
    server.routes[("POST", "/v1/chat/completions")] = lambda h: send_bytes(h, 200, big, with_length)
    out = captioner(server.base_url, retries=2).generate(items(1))[0]
    assert out.error.startswith(f"response larger than {4 * MiB} bytes") and out.text == ""
    assert_one_line(out.error)
    assert server.count("POST") == 1  # the server answered: not retried

    small = captioner(server.base_url, max_response_bytes=1000).generate(items(1))[0]
    assert small.error.startswith("response larger than 1000 bytes")


def trickle_body(h: ScriptedHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    for _ in range(1000):
        if h.server.stop.wait(0.2):
            return
        h.wfile.write(b" ")


def trickle_headers(h: ScriptedHandler) -> None:
    h.wfile.write(b"HTTP/1.0 200 OK\r\n")
    for _ in range(1000):
        if h.server.stop.wait(0.2):
            return
        h.wfile.write(b"a" if _ else b"X-Slow: ")


@pytest.mark.parametrize("route", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_trickling_server_fails_at_the_deadline(server, route):
    """A byte every 0.2 s never trips a 1 s socket timeout; the whole-request deadline ends it."""
    server.routes[("POST", "/v1/chat/completions")] = route
    t0 = time.monotonic()
    out = captioner(server.base_url, timeout_s=1.0).generate(items(1))[0]
    assert out.error == "no complete answer within timeout_s=1 s"
    assert time.monotonic() - t0 < 30  # generous: the trickle alone would take 200 s


# --- the circuit breaker ---------------------------------------------------------------------------------


def test_down_server_stops_getting_requests(monkeypatch):
    """20 clips against a closed port: a bounded number of connection attempts, every clip failed."""
    attempts: list[tuple] = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    cap = captioner(f"http://127.0.0.1:{closed_port()}/v1", concurrency=4, retries=2, circuit_failures=3)
    outs = cap.generate(items(20))
    assert all(o.error and not o.text for o in outs)
    assert len(attempts) <= 3 + 4  # threshold + requests in flight, not 20 clips x 3 attempts
    opened = [o.error for o in outs if o.error.startswith("caption server unreachable")]
    assert len(opened) >= 20 - len(attempts)
    assert opened[0].startswith(
        "caption server unreachable (circuit open after 3 consecutive failures): request failed:")
    assert "refused" in opened[0].lower()
    for o in outs:
        assert_one_line(o.error)

    # The next batch of the run fails at once too, without a single connection.
    n = len(attempts)
    assert all(o.error.startswith("caption server unreachable") for o in cap.generate(items(5)))
    assert len(attempts) == n


def test_repeated_timeouts_open_the_circuit(server):
    server.routes[("POST", "/v1/chat/completions")] = lambda h: h.server.stop.wait(60)  # never answers
    outs = captioner(server.base_url, timeout_s=0.5, concurrency=2, retries=1, circuit_failures=3).generate(items(8))
    assert server.count("POST") <= 3 + 2
    assert all(o.error for o in outs)
    assert sum(o.error.startswith("caption server unreachable (circuit open after 3 consecutive failures): "
                                  "no complete answer within timeout_s=0.5 s") for o in outs) >= 8 - 5


def test_error_answers_and_successes_keep_the_circuit_closed(server):
    server.routes[("POST", "/v1/chat/completions")] = lambda h: send_json(h, 500, {"error": {"message": "busy"}})
    outs = captioner(server.base_url, concurrency=2, circuit_failures=3).generate(items(6))
    assert server.count("POST") == 6  # the server answers: it is not down
    assert all(o.error.startswith("HTTP 500") and "busy" in o.error for o in outs)

    def drop_some(h: ScriptedHandler) -> None:  # requests 0, 1, 3, 4 lose their connection
        if h.number - 6 in (0, 1, 3, 4):
            h.close_connection = True
            return
        send_json(h, 200, chat_answer("A cat."))

    server.routes[("POST", "/v1/chat/completions")] = drop_some
    outs = captioner(server.base_url, circuit_failures=3).generate(items(6))
    assert server.count("POST") == 12  # two failures, a success, two failures, a success: never open
    assert [o.text for o in outs] == ["", "", "A cat.", "", "", "A cat."]
    assert all(o.error.startswith("request failed:") for o in outs if not o.text)


# --- malformed answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "reason"), [
    (chat_answer(None), "malformed answer: message content is null, not text"),
    (chat_answer([{"type": "text", "text": "A cat."}]), "malformed answer: message content is an array, not text"),
    (chat_answer(42), "malformed answer: message content is a number, not text"),
    ({"object": "error", "message": "oops"}, "malformed answer: no choices"),
    ({"choices": []}, "malformed answer: no choices"),
    ({"choices": ["A cat."]}, "malformed answer: choices[0] has no message"),
    ({"choices": [{"message": None}]}, "malformed answer: choices[0] has no message"),
    ([1, 2], "malformed answer: the answer is an array, not an object"),
    (None, "malformed answer: the answer is null, not an object"),
    (b"<html>Bad Gateway</html>", "malformed answer: not JSON"),
    (b'{"choices": [', "malformed answer: not JSON"),
    (b'{"choices": "caf\xe9"}', "malformed answer: not JSON"),
    (b"[" * 200_000, "malformed answer: not JSON"),
], ids=["null", "list", "number", "error-object", "empty-choices", "choice-not-object", "message-null",
        "array", "json-null", "html", "truncated", "not-utf8", "deep-nesting"])
def test_malformed_answer_is_a_failure_of_its_clip(server, answer, reason):
    server.routes[("POST", "/v1/chat/completions")] = answer_with(answer)
    out = captioner(server.base_url, retries=2).generate(items(1))[0]
    assert out.error.startswith(reason) and out.text == ""
    assert_one_line(out.error)
    assert server.count("POST") == 1  # not retried


def test_odd_usage_does_not_fail_a_good_answer(server):
    server.routes[("POST", "/v1/chat/completions")] = answer_with(
        {"choices": [{"message": {"content": "A cat."}}], "usage": {"completion_tokens": "many"}})
    out = captioner(server.base_url).generate(items(1))[0]
    assert (out.text, out.new_tokens, out.error) == ("A cat.", 0, "")


@pytest.mark.parametrize("answer", [b"oops", [], {"data": None}, {"data": "x"}, {"models": []}],
                         ids=["not-json", "array", "data-null", "data-string", "no-data"])
def test_malformed_models_answer_falls_back_to_an_unverified_label(server, answer, caplog):
    server.routes[("GET", "/v1/models")] = answer_with(answer)
    endpoint = EndpointConfig(base_url=server.base_url, model_name=MODEL, api_key_env="")
    with caplog.at_level(logging.WARNING, logger="caption"):
        label = endpoint_label(endpoint)
    assert label.startswith(f"openai:{MODEL}@unverified-")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "malformed /models answer" in warnings[0] and "\n" not in warnings[0]
    assert endpoint_label(endpoint) == label  # the same answer, the same label: its captions are reused


def test_models_answer_other_failures(server):
    server.routes[("GET", "/v1/models")] = answer_with(b"[" + b"1," * 1000 + b"1]")
    label = endpoint_label(EndpointConfig(base_url=server.base_url, model_name=MODEL, max_response_bytes=100))
    assert label.startswith(f"openai:{MODEL}@unverified-")  # too large: not trusted, no crash
    server.routes[("GET", "/v1/models")] = answer_with({"data": [{"id": "other"}, "junk", {"id": 3}]})
    with pytest.raises(RuntimeError, match=r"model 'tiny-vl' is not served \(serves \['other'\]\)"):
        endpoint_label(EndpointConfig(base_url=server.base_url, model_name=MODEL))
    with pytest.raises(RuntimeError, match="caption endpoint not reachable"):
        endpoint_label(EndpointConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", model_name=MODEL))


def test_stage_turns_malformed_answers_into_caption_failed_rows(tmp_path, server):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(photo)
    rows = [dataset_row(f"{i:016x}", "image", photo, 0.0, 1, 32, 32) for i in range(3)]
    server.routes[("GET", "/v1/models")] = answer_with(b"not a model list")
    server.routes[("POST", "/v1/chat/completions")] = answer_with(chat_answer({"text": "A red square."}))
    p = {"backend": "openai", "image_max_pixels": 32 * 32,
         "openai": {"base_url": server.base_url, "model_name": MODEL, "api_key_env": "", "retries": 0}}
    out = tmp_path / "out"
    table, metrics = run_caption(dataset(rows), p, out / "captions.parquet", out / "captions.parts",
                                 out / "metrics" / "caption.json", tmp_path / "edits.csv")
    assert table["status"].to_list() == ["caption_failed"] * 3
    assert all(r.startswith("malformed answer: message content is an object, not text") for r in table["reason"])
    assert all(m.startswith(f"openai:{MODEL}@unverified-") for m in table["model"])
    assert metrics["failed"] == 3


# --- redirects -----------------------------------------------------------------------------------------------


def test_api_key_is_not_sent_along_a_redirect_to_another_host(server, other_server, monkeypatch):
    monkeypatch.setenv("VLP_TEST_CAPTION_KEY", "secret-key")
    endpoint = EndpointConfig(base_url=server.base_url, model_name=MODEL, api_key_env="VLP_TEST_CAPTION_KEY")
    server.routes[("GET", "/v1/models")] = redirect_to(other_server.base_url + "/models", 307)
    assert endpoint_label(endpoint).startswith(f"openai:{MODEL}@")
    assert server.seen == [("GET", "/v1/models", "Bearer secret-key")]
    assert other_server.seen == [("GET", "/v1/models", None)]

    # A redirect on the same server keeps the key.
    server.seen.clear()
    server.routes[("GET", "/v1/models")] = redirect_to(server.root + "/v2/models", 307)
    server.routes[("GET", "/v2/models")] = models_route
    assert endpoint_label(endpoint).startswith(f"openai:{MODEL}@")
    assert server.seen == [("GET", "/v1/models", "Bearer secret-key"), ("GET", "/v2/models", "Bearer secret-key")]

    # A caption request is never redirected: a 302 would turn it into a GET without the clip
    # (whose answer would be a caption of nothing), a 307 would upload the clip elsewhere.
    other_server.seen.clear()
    other_server.routes[("GET", "/v1/chat/completions")] = answer_with(chat_answer("A cat."))
    other_server.routes[("POST", "/v1/chat/completions")] = answer_with(chat_answer("A cat."))
    cap = captioner(server.base_url, api_key_env="VLP_TEST_CAPTION_KEY", retries=2)
    target = other_server.base_url + "/chat/completions"
    for code in (301, 302, 303, 307, 308):
        server.routes[("POST", "/v1/chat/completions")] = redirect_to(target, code)
        out = cap.generate(items(1))[0]
        assert out.error == f"HTTP {code}: redirect to {target} not followed" and out.text == ""
    assert other_server.seen == []
    assert server.count("POST") == 5  # not retried
