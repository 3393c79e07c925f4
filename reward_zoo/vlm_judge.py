"""A vision-language model as judge, served behind an OpenAI-compatible `/v1/chat/completions` (vLLM, SGLang).

Each image is sent as a base64 PNG data URL with the template (`{prompt}` replaced by the sample's prompt).
Two ways to read the answer (`mode`):

- `yes_no` (the UnifiedReward / GenEval2 Soft-TIFA convention): ask for one token with its top-k
  log-probs and score the judge's confidence instead of its sampled word,
      score = P(yes) / (P(yes) + P(no)),   P(yes) = Σ exp(logprob) over top-k tokens t with
                                           t.strip().lower() == "yes" (Yes, " yes", YES, ...), same for no.
  A token absent from the top k counts as probability 0; if neither is present the sample fails.
- `number`: greedy-decode up to `max_tokens` and read the first match of `number_regex` (its group 1 if it
  has one), normalised by `number_range` = [lo, hi]: score = (x - lo) / (hi - lo); x outside fails.

Requests run `concurrency` at a time. A sample whose request fails after its retries, or whose answer
cannot be read, is a failed sample (its group is dropped, the run goes on). At construction the scorer
asks `/v1/models` once: a server that is down is a one-line error naming the URL, and without `model`
the first served model is judged with. The API key is read from the environment variable named by
`api_key_env`, never from the recipe.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch

from reward_zoo.base import Scorer, ScorerConfigError, ScoreResult
from reward_zoo.http_client import JSONClient, RequestFailed, bearer_headers, check_server, check_url
from reward_zoo.protocol import encode_images

DEFAULT_TEMPLATE = 'Does this image match the description "{prompt}"? Answer Yes or No.'


class VLMJudge(Scorer):
    name = "vlm_judge"
    description = "a VLM judge behind an OpenAI-compatible API (vLLM, SGLang): P(yes) from log-probs, or a number"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        mode: Literal["yes_no", "number"] = "yes_no",
        top_logprobs: int = 20,
        number_range: tuple[float, float] = (0.0, 10.0),
        number_regex: str = r"-?\d+(?:\.\d+)?",
        max_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        batch_size: int | None = None,
    ):
        super().__init__(batch_size)
        lo, hi = number_range
        if not hi > lo:
            raise ScorerConfigError(f"reward 'vlm_judge': number_range must be [lo, hi] with hi > lo, got {list(number_range)}")
        try:
            self.number_regex = re.compile(number_regex)
        except re.error as error:
            raise ScorerConfigError(f"reward 'vlm_judge': number_regex {number_regex!r} is not a regex ({error})") from None
        if self.number_regex.groups > 1:
            raise ScorerConfigError("reward 'vlm_judge': number_regex may have at most one capturing group (the number)")
        for key, value in {"top_logprobs": top_logprobs, "concurrency": concurrency, "max_tokens": max_tokens}.items():
            if value is not None and value < 1:
                raise ScorerConfigError(f"reward 'vlm_judge': {key} must be >= 1, got {value}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ScorerConfigError("reward 'vlm_judge': timeout must be > 0, retries and backoff >= 0")
        self.template, self.mode, self.top_logprobs = template, mode, top_logprobs
        self.number_range = (float(lo), float(hi))
        self.max_tokens = max_tokens or (1 if mode == "yes_no" else 32)
        self.extra_body = dict(extra_body or {})
        self.concurrency = concurrency
        base_url = check_url(self.name, url).removesuffix("/v1")
        self._client = JSONClient(
            base_url, timeout=timeout, retries=retries, backoff=backoff,
            headers=bearer_headers(self.name, api_key_env, "api_key_env"), max_connections=concurrency,
        )
        served = check_server(self.name, self._client, "/v1/models", "start the judge first (e.g. `vllm serve MODEL`) or fix kwargs.url")
        ids = [m.get("id") for m in served.get("data", []) if isinstance(m, dict)] if isinstance(served, dict) else []
        if model is None and not ids:
            raise ScorerConfigError(f"reward 'vlm_judge': {self._client.url('/v1/models')} lists no model; set kwargs.model")
        if model is not None and ids and model not in ids:
            raise ScorerConfigError(f"reward 'vlm_judge': {self._client.url('/v1/models')} serves {ids}, not model {model!r}")
        self.model = model or ids[0]

    @classmethod
    def weights_status(cls, **_: Any) -> tuple[bool, str]:
        return True, "served by an OpenAI-compatible server (kwargs.url)"

    def request(self, image_png: str, prompt: str) -> dict[str, Any]:
        """The chat-completions body for one sample (greedy; log-probs only in yes_no mode)."""
        text = self.template.replace("{prompt}", prompt)
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_png}"}},
                {"type": "text", "text": text},
            ]}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            **self.extra_body,
        }
        if self.mode == "yes_no":
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def read_yes_no(self, response: Any) -> tuple[float, float, str]:
        """(P(yes), P(no), first token) from choices[0].logprobs.content[0].top_logprobs."""
        try:
            first = response["choices"][0]["logprobs"]["content"][0]
            top = [(str(t["token"]), float(t["logprob"])) for t in first["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError("no choices[0].logprobs.content[0].top_logprobs in the answer (does the server support logprobs?)") from None
        answers = [(t.strip().lower(), lp) for t, lp in top if t.strip().lower() in ("yes", "no")]
        if not all(math.isfinite(lp) or lp == -math.inf for _, lp in answers):
            raise ValueError(f"non-finite log-prob for yes/no in the answer: {answers}")
        p_yes = sum(math.exp(lp) for t, lp in answers if t == "yes")
        p_no = sum(math.exp(lp) for t, lp in answers if t == "no")
        if not p_yes + p_no > 0:
            raise ValueError(f"neither yes nor no among the top {len(top)} first tokens (first token {first.get('token')!r})")
        return p_yes, p_no, str(first.get("token", ""))

    def read_number(self, response: Any) -> tuple[float, str]:
        """(normalised score, answer text) from choices[0].message.content."""
        try:
            answer = str(response["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise ValueError("no choices[0].message.content in the answer") from None
        match = self.number_regex.search(answer)
        if match is None:
            raise ValueError(f"no number in the answer {answer[:80]!r}")
        text = match.group(1) if self.number_regex.groups else match.group(0)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"number_regex matched {text!r} in {answer[:80]!r}, not a number") from None
        lo, hi = self.number_range
        if not lo <= value <= hi:
            raise ValueError(f"answer {value:g} outside number_range [{lo:g}, {hi:g}]")
        return (value - lo) / (hi - lo), answer

    def _judge_one(self, image_png: str, prompt: str) -> tuple[float, float, float, str]:
        """(score, P(yes), P(no), answer) for one sample; raises RequestFailed or ValueError with a one-line reason."""
        response = self._client.post_json("/v1/chat/completions", self.request(image_png, prompt))
        if self.mode == "number":
            score, answer = self.read_number(response)
            return score, math.nan, math.nan, answer
        p_yes, p_no, token = self.read_yes_no(response)
        return p_yes / (p_yes + p_no), p_yes, p_no, token

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        pngs = encode_images(images)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pngs))) as pool:
            futures = [pool.submit(self._judge_one, png, prompt) for png, prompt in zip(pngs, prompts)]
        rows, errors = [], {}
        for i, future in enumerate(futures):
            try:
                rows.append(future.result())
            except (RequestFailed, ValueError) as error:
                rows.append((math.nan, math.nan, math.nan, ""))
                errors[i] = f"{self._client.url('/v1/chat/completions')}: {error}"
        scores, p_yes, p_no = torch.tensor([r[:3] for r in rows], dtype=torch.float32, device=images.device).T
        details = {"p_yes": p_yes, "p_no": p_no} if self.mode == "yes_no" else {}
        failed = torch.tensor([i in errors for i in range(len(rows))], dtype=torch.bool, device=images.device)
        return ScoreResult(scores, failed, details, texts={"answer": [r[3] for r in rows]}, errors=errors)
