"""HTTP for scorers whose model runs in another process (`remote`, `vlm_judge`), through one httpx client.

Two kinds of failure, two outcomes:
- at start, a server that cannot be reached or answers wrongly is a configuration error
  (`ScorerConfigError`, one line naming the URL): nothing has trained yet, the user starts the server;
- during training, a request that still fails after `retries` retries (connection error, timeout,
  status 408/429/5xx; waits backoff, 2·backoff, 4·backoff, ...) raises `RequestFailed`, which the
  scorer turns into failed samples: the trainer drops their groups and the run goes on.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from typing import Any

import httpx

from reward_zoo.base import ScorerConfigError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RequestFailed(RuntimeError):
    """A request that did not give a usable answer after its retries; the message is one line."""


def _reason(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        return "connection refused or host unreachable"
    return f"{type(error).__name__}: {error}"


def _error_text(response: httpx.Response) -> str:
    """The server's one-line reason: an {"error": ...} body, else the start of the body."""
    try:
        body = response.json()
        text = str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        text = response.text
    return " ".join(text.split())[:200]


def check_url(reward: str, url: str) -> str:
    """The server's base URL without a trailing slash; a ScorerConfigError unless it is http(s)://host[:port][/path]."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ScorerConfigError(f"reward '{reward}': url {url!r} is not a URL ({error})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ScorerConfigError(f"reward '{reward}': url must look like http://127.0.0.1:8000, got {url!r}")
    return url.rstrip("/")


def bearer_headers(reward: str, env_name: str | None, kwarg: str) -> dict[str, str]:
    """{"Authorization": "Bearer <$env_name>"}, or {} without env_name; the secret never sits in a recipe."""
    if env_name is None:
        return {}
    value = os.environ.get(env_name)
    if not value:
        raise ScorerConfigError(
            f"reward '{reward}': environment variable {env_name} (named by {kwarg}) is not set; export it first"
        )
    return {"Authorization": f"Bearer {value}"}


class JSONClient:
    """POST/GET JSON to one server with a timeout per attempt and bounded retries with exponential backoff."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        headers: dict[str, str] | None = None,
        max_connections: int = 8,
    ):
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers or {},
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        weakref.finalize(self, self._client.close)  # its kept-alive connections close with the scorer

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def get_json(self, path: str, *, timeout: float) -> Any:
        """One GET (no retries: used at start, where the user wants a fast answer); RequestFailed on any problem."""
        try:
            response = self._client.get(self.url(path), timeout=timeout)
        except httpx.HTTPError as error:
            raise RequestFailed(_reason(error)) from None
        return self._parse(response)

    def post_json(self, path: str, payload: dict[str, Any]) -> Any:
        """POST with retries on connection errors, timeouts and 408/429/5xx; RequestFailed after the last one."""
        body = json.dumps(payload, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.url(path), content=body, headers=headers)
            except httpx.HTTPError as error:
                reason = _reason(error)
                continue
            if response.status_code in RETRYABLE_STATUS:
                reason = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            return self._parse(response)
        raise RequestFailed(f"{reason} (after {self.retries + 1} attempts)")

    @staticmethod
    def _parse(response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise RequestFailed(f"HTTP {response.status_code}: {_error_text(response)}")
        try:
            return response.json()
        except ValueError:
            raise RequestFailed(f"the response is not JSON: {' '.join(response.text.split())[:120]!r}") from None


def check_server(reward: str, client: JSONClient, path: str, what_to_do: str, timeout: float = 10.0) -> Any:
    """GET `path` once at construction: a server that is down is a one-line ScorerConfigError naming the URL."""
    try:
        return client.get_json(path, timeout=timeout)
    except RequestFailed as error:
        raise ScorerConfigError(f"reward '{reward}': no usable server at {client.url(path)} ({error}); {what_to_do}") from None
