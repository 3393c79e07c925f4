"""`mogen serve-reward`: any registered scorer behind HTTP + JSON (`reward_zoo/protocol.py`), no pickle.

A scorer with conflicting dependencies (mmdet for GenEval, PaddleOCR) runs in its own venv or on a GPU
box; the training recipe names it through the `remote` scorer and does not change otherwise.

Concurrency: the HTTP server answers each connection in a thread, but only one worker thread touches the
scorer. It takes the oldest waiting request and merges the requests queued behind it (same image size,
up to `max_batch` images) into one batch, so concurrent clients share forward passes and a model that
is not thread-safe is never called from two threads.

Exposure: it binds 127.0.0.1 unless told otherwise; any other address needs `allow_remote` and a
bearer token (checked with a constant-time compare on every request, /health included).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import queue
import signal
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from reward_zoo.base import Scorer, ScorerError, ScoreResult
from reward_zoo.protocol import PROTOCOL_VERSION, decode_request, encode_result


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, allow_remote: bool, token: str | None) -> None:
    """A non-loopback bind needs --allow-remote and a token: a reward server must not be open by accident."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(f"--host {host} is not a loopback address; add --allow-remote (and --token-env VAR) to expose the server")
    if not token:
        raise ValueError(f"--host {host} with --allow-remote needs a bearer token: --token-env VAR with VAR set")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


@dataclass
class _Job:
    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict[str, Any]]
    future: Future = field(default_factory=Future)


def _slice(result: ScoreResult, start: int, stop: int) -> ScoreResult:
    return ScoreResult(
        scores=result.scores[start:stop],
        failed=result.failed[start:stop],
        details={k: v[start:stop] for k, v in result.details.items()},
        texts={k: v[start:stop] for k, v in result.texts.items()},
        errors={i - start: e for i, e in result.errors.items() if start <= i < stop},
    )


class BatchingScorer:
    """Scores jobs from many threads in one worker thread, merging the jobs waiting at the same time."""

    def __init__(self, scorer: Scorer, max_batch: int):
        self.scorer, self.max_batch, self.device = scorer, max_batch, scorer.device
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._held: _Job | None = None  # a job of another image size, first in the next batch
        threading.Thread(target=self._work, name="scorer", daemon=True).start()

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        job = _Job(images, prompts, metadata)
        self._jobs.put(job)
        return job.future.result()

    def _next_batch(self) -> list[_Job]:
        first, self._held = self._held or self._jobs.get(), None
        batch, size = [first], len(first.images)
        while size < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job.images.shape[1:] != first.images.shape[1:] or size + len(job.images) > self.max_batch:
                self._held = job
                break
            batch.append(job)
            size += len(job.images)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            images = torch.cat([job.images for job in batch])
            prompts = [p for job in batch for p in job.prompts]
            metadata = [m for job in batch for m in job.metadata]
            try:
                result = self.scorer(images, prompts, metadata)
            except ScorerError as error:  # every sample failed: a result, not a server error
                n = len(images)
                result = ScoreResult(torch.full((n,), float("nan")), torch.ones(n, dtype=torch.bool), errors=dict.fromkeys(range(n), str(error)))
            except Exception as error:  # noqa: BLE001 - reported to each waiting request as a 500
                for job in batch:
                    job.future.set_exception(error)
                continue
            start = 0
            for job in batch:
                job.future.set_result(_slice(result, start, start + len(job.images)))
                start += len(job.images)


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], scorer: BatchingScorer, health: dict[str, Any], token: str | None, max_request_bytes: int):
        self.scorer, self.health, self.token, self.max_request_bytes = scorer, health, token, max_request_bytes
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connection between steps
    timeout = 60  # seconds a socket read may wait: a stalled client cannot hold a thread forever

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            return True
        self._send(401, {"error": "missing or wrong bearer token (Authorization: Bearer ...)"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        if self.path.rstrip("/") != "/health":
            self._send(404, {"error": f"unknown path {self.path}; GET /health or POST /score"})
        elif self._authorized():
            self._send(200, self.server.health)

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"unknown path {self.path}; GET /health or POST /score"})
            self.close_connection = True
            return
        if not self._authorized():
            self.close_connection = True
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._send(411, {"error": "a Content-Length header is required"})
        if int(length) > self.server.max_request_bytes:
            self.close_connection = True  # the unread body must not be taken for the next request
            return self._send(413, {"error": f"request of {length} bytes exceeds the limit of {self.server.max_request_bytes}; send fewer images per request"})
        try:
            images, prompts, metadata = decode_request(json.loads(self.rfile.read(int(length))), self.server.scorer.device)
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            return self._send(400, {"error": _one_line(str(error))})
        try:
            result = self.server.scorer(images, prompts, metadata)
        except Exception as error:  # noqa: BLE001 - the client retries, then fails these samples
            return self._send(500, {"error": _one_line(f"{type(error).__name__}: {error}")})
        self._send(200, encode_result(self.server.health["reward"], result))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int) and code >= 400:  # successful requests are not worth a line each
            super().log_request(code, size)


def health_report(name: str, scorer: Scorer, kwargs: dict[str, Any], max_request_bytes: int, max_batch: int) -> dict[str, Any]:
    """What GET /health returns: enough to tell which scorer, with which weights, on which device."""
    try:
        present, where = type(scorer).weights_status(**kwargs)
    except Exception as error:  # noqa: BLE001 - a weights_status that rejects these kwargs must not stop serving
        present, where = True, f"(weights_status failed: {error})"
    return {
        "protocol": PROTOCOL_VERSION,
        "reward": name,
        "description": scorer.description,
        "higher_is_better": bool(scorer.higher_is_better),
        "kwargs": json.loads(json.dumps(kwargs, default=str)),
        "weights_present": bool(present),
        "weights": str(where),
        "device": str(scorer.device),
        "dtype": str(scorer.dtype).removeprefix("torch."),
        "max_request_bytes": max_request_bytes,
        "max_batch": max_batch,
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl-C: the socket is closed cleanly


def serve(
    name: str,
    scorer: Scorer,
    kwargs: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_request_bytes: int = 64 * 2**20,
    max_batch: int = 64,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). Port 0 picks a free port; the first stdout line has the URL."""
    health = health_report(name, scorer, kwargs, max_request_bytes, max_batch)
    try:
        server = RewardServer((host, port), BatchingScorer(scorer, max_batch), health, token, max_request_bytes)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    bound_host, bound_port = server.server_address[:2]
    bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving reward '{name}' at http://{bound_host}:{bound_port} (GET /health, POST /score); Ctrl-C stops", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
