"""`remote`: the client of `mogen serve-reward`, so that a scorer can run in its own venv or on another machine.

    rewards:
      - {name: remote, label: geneval, kwargs: {url: "http://127.0.0.1:8765", reward: geneval}}

`reward` names the scorer the recipe expects on the other side. At construction the client reads the
server's /health once: a server that is down, speaks another protocol or serves another reward is a
one-line error naming the URL. It then behaves as the served
scorer (same higher_is_better, details and texts); a request that fails after its retries, or an answer
that does not fit the schema in `reward_zoo/protocol.py`, fails the samples it carried.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reward_zoo.base import Scorer, ScorerConfigError, ScoreResult
from reward_zoo.http_client import JSONClient, RequestFailed, bearer_headers, check_server, check_url
from reward_zoo.protocol import PROTOCOL_VERSION, decode_result, encode_request


class RemoteScorer(Scorer):
    name = "remote"
    description = "a scorer served by `mogen serve-reward` in another process or machine (JSON over HTTP)"

    def __init__(
        self,
        url: str,
        reward: str,
        token_env: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        backoff: float = 0.5,
        batch_size: int | None = None,
    ):
        super().__init__(batch_size)
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ScorerConfigError("reward 'remote': timeout must be > 0, retries and backoff >= 0")
        self._client = JSONClient(
            check_url(self.name, url), timeout=timeout, retries=retries, backoff=backoff,
            headers=bearer_headers(self.name, token_env, "token_env"),
        )
        health = check_server(self.name, self._client, "/health", "start it with `mogen serve-reward NAME` or fix kwargs.url")
        where = self._client.url("/health")
        if not isinstance(health, dict) or health.get("protocol") != PROTOCOL_VERSION:
            got = health.get("protocol") if isinstance(health, dict) else health
            raise ScorerConfigError(f"reward 'remote': {where} speaks protocol {got!r}, this client {PROTOCOL_VERSION}")
        if health.get("reward") != reward:
            raise ScorerConfigError(f"reward 'remote': {where} serves {health.get('reward')!r}, the recipe expects {reward!r}")
        self.served = health
        self.higher_is_better = bool(health.get("higher_is_better", True))  # the trainer negates lower-is-better

    @classmethod
    def weights_status(cls, **_: Any) -> tuple[bool, str]:
        return True, "on the server (its GET /health reports them)"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        n = images.shape[0]
        try:
            body = self._client.post_json("/score", encode_request(images, prompts, metadata))
            return decode_result(body, n, images.device)
        except (RequestFailed, ValueError) as error:
            reason = f"{self._client.url('/score')}: {error}"
            nan = torch.full((n,), math.nan, device=images.device)
            return ScoreResult(nan, torch.ones(n, dtype=torch.bool, device=images.device), errors=dict.fromkeys(range(n), reason))
