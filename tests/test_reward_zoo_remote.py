"""Rewards that run elsewhere, over real HTTP on 127.0.0.1: `mogen serve-reward` with the `remote` scorer, and the
`vlm_judge` scorer against an OpenAI-compatible server running a random-weight Qwen2-VL, plus the faults a server has.

Servers are real processes (or, for scripted faults, a real HTTP server in a thread) on free loopback ports; every
test stops what it starts.
"""

from __future__ import annotations

import json
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import reward_zoo
from mogen.cli import app
from reward_zoo import ScorerConfigError, to_pil
from reward_zoo.server import BatchingScorer
from reward_zoo.simple import Compressibility

TESTS = Path(__file__).parent
TOKEN_ENV = "MOGEN_TEST_REWARD_TOKEN"
TEMPLATE = 'Does this image match the description "{prompt}"? Answer Yes or No.'
PROMPTS = ["a red circle", "two blue squares", "a red circle", "three green triangles"]


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Pixels on the 8-bit grid: a PNG round trip is exact, so float-pixel scorers must agree bit for bit too."""
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed)).float() / 255


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess whose first stdout line names its URL; stopped (SIGTERM, then SIGKILL) by `stop`."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "w") as err:
            self.process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=lambda: [self._lines.put(line) for line in self.process.stdout], daemon=True)
        self._reader.start()
        self._url: str | None = None

    def url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while self._url is None:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "server did not start in time"
                continue
            if "http://127.0.0.1:" in line:
                self._url = "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split()[0]
        return self._url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 20 s (a torch process takes seconds to tear down)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)  # it ends at the closed pipe's EOF
        self.process.stdout.close()


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from openai_vlm_server import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


@pytest.fixture(scope="module", autouse=True)
def servers(tmp_path_factory: pytest.TempPathFactory, vlm_dir: Path):
    """Every server process of this module, started at once when the module starts (they boot while the scripted
    tests run) and stopped at its end."""
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, TOKEN_ENV: "sekrit-token"}
    started = {
        "compressibility": Server(["-m", "mogen", "serve-reward", "compressibility", "--port", "0"], logs / "c.log"),
        "vivid": Server(["-m", "mogen", "serve-reward", "vivid", "--set", "contrast_weight=0.25", "--port", "0",
                         "--token-env", TOKEN_ENV, "--max-request-mb", "0.05"], logs / "v.log", env),
        "vlm": Server([str(TESTS / "openai_vlm_server.py"), "--model-dir", str(vlm_dir), "--port", "0"], logs / "vlm.log"),
    }
    yield started
    for server in started.values():
        server.process.terminate()  # all at once: their teardowns overlap
    for server in started.values():
        server.stop()


# --- in-process parts of the server, its command line ------------------------------------------------


def test_concurrent_requests_are_merged_into_one_batch():
    """While the worker scores one request, the requests queued behind it are scored together and split back."""
    release, sizes = threading.Event(), []

    class Gated(Compressibility):
        def score(self, images, prompts, metadata):
            sizes.append(len(images))
            release.wait(timeout=10)
            return super().score(images, prompts, metadata)

    batching, images = BatchingScorer(Gated(), max_batch=64), _images(6)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batching, images[:1], ["a"], [{}])
        while not sizes:  # the worker holds the first request
            time.sleep(0.01)
        rest = [pool.submit(batching, images[1:3], ["b", "c"], [{}, {}]), pool.submit(batching, images[3:], ["d"] * 3, [{}] * 3)]
        while batching._jobs.qsize() < 2:
            time.sleep(0.01)
        release.set()
        results = [first.result(), *(f.result() for f in rest)]
    assert sizes == [1, 5]
    expected = Compressibility()(images)
    assert torch.equal(torch.cat([r.scores for r in results]), expected.scores)
    assert [len(r) for r in results] == [1, 2, 3]


def test_serve_reward_refuses_an_open_bind_and_a_busy_port():
    runner = CliRunner()
    result = runner.invoke(app, ["serve-reward", "compressibility", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "add --allow-remote" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["serve-reward", "compressibility", "--host", "0.0.0.0", "--allow-remote"])
    assert result.exit_code == 2 and "needs a bearer token: --token-env VAR" in result.output
    result = runner.invoke(app, ["serve-reward", "compressibility", "--token-env", "MOGEN_TEST_UNSET_VARIABLE"])
    assert result.exit_code == 2 and "--token-env MOGEN_TEST_UNSET_VARIABLE: that environment variable is not set" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(app, ["serve-reward", "compressibility", "--port", str(busy.getsockname()[1])])
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


# --- faults, from a scripted server ---------------------------------------------------------------------

Reply = Callable[[str, dict], tuple[int, bytes, float]]  # (path, request body) -> (status, raw body, delay in s)


class Scripted:
    """A real HTTP server on 127.0.0.1 (in a thread) that answers what the test scripts, and records the requests."""

    def __init__(self):
        self.reply: Reply = lambda path, body: (200, b"{}", 0.0)
        self.requests: list[tuple[str, dict, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, data: bytes, delay: float) -> None:
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                health = {"protocol": 1, "reward": "compressibility", "higher_is_better": True}
                models = {"data": [{"id": "scripted-judge"}]}
                self._answer(200, json.dumps(models if self.path == "/v1/models" else health).encode(), 0.0)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body, self.headers.get("Authorization")))
                self._answer(*owner.reply(self.path, body))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.stop()


def _chat(top: dict[str, float] | None = None, content: str = "", logprob_value: Any = None) -> bytes:
    """An OpenAI chat.completion body: first-token top_logprobs from token -> probability, or a text answer."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        entries = [{"token": t, "logprob": logprob_value if logprob_value is not None else math.log(p)} for t, p in top.items()]
        choice["logprobs"] = {"content": [{**entries[0], "top_logprobs": entries}]}
    return json.dumps({"choices": [choice]}).encode()


def test_judge_reads_yes_no_variants_and_numbers(scripted, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "k-123")
    scripted.reply = lambda path, body: (200, _chat({"Yes": 0.5, " yes": 0.1, "No": 0.2, "NO": 0.1, "Maybe": 0.05}), 0.0)
    judge = reward_zoo.get("vlm_judge", url=scripted.url, api_key_env="JUDGE_KEY", template="Is it {prompt}?")
    result = judge(_images(2), ["a cat", "a dog"])
    torch.testing.assert_close(result.scores, torch.full((2,), 0.6 / 0.9))
    torch.testing.assert_close(result.details["p_yes"], torch.full((2,), 0.6))
    path, body, auth = scripted.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k-123" and body["model"] == "scripted-judge"
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert sorted(b["messages"][0]["content"][1]["text"] for _, b, _ in scripted.requests) == ["Is it a cat?", "Is it a dog?"]
    scripted.reply = lambda path, body: (200, _chat({"Maybe": 0.6, "Perhaps": 0.3}), 0.0)
    neither = judge(_images(1), ["a cat"])
    assert neither.failed.all() and "neither yes nor no among the top 2 first tokens (first token 'Maybe')" in neither.errors[0]
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ScorerConfigError, match="environment variable JUDGE_KEY \\(named by api_key_env\\) is not set"):
        reward_zoo.get("vlm_judge", url=scripted.url, api_key_env="JUDGE_KEY")

    answers = {"A": "Score: 7 out of 10", "B": "I cannot tell", "C": "15", "D": "<think>3 dogs</think> Final: 2.5"}
    scripted.reply = lambda path, body: (200, _chat(content=answers[body["messages"][0]["content"][1]["text"]]), 0.0)
    judge = reward_zoo.get("vlm_judge", url=scripted.url, template="{prompt}", mode="number", number_range=[0, 10])
    result = judge(_images(4), ["A", "B", "C", "D"])
    assert result.failed.tolist() == [False, True, True, False]
    assert result.scores[0] == pytest.approx(0.7) and result.scores[3] == pytest.approx(0.3)  # the first number: "3"
    assert "no number in the answer" in result.errors[1] and "outside number_range [0, 10]" in result.errors[2]
    with pytest.raises(ScorerConfigError, match=r"/v1/models serves \['scripted-judge'\], not model 'other'"):
        reward_zoo.get("vlm_judge", url=scripted.url, model="other")
    with pytest.raises(ScorerConfigError, match=r"number_range must be \[lo, hi\] with hi > lo, got \[5.0, 1.0\]"):
        reward_zoo.get("vlm_judge", url=scripted.url, mode="number", number_range=[5, 1])
    regex = reward_zoo.get("vlm_judge", url=scripted.url, template="{prompt}", mode="number", number_regex=r"Final: ([\d.]+)")
    assert regex(_images(1), ["D"]).scores.tolist() == [pytest.approx(0.25)]


@pytest.mark.parametrize("reward", ["vlm_judge", "remote"])
def test_a_server_down_at_start_is_one_line_naming_the_url(reward, tmp_path, tiny_model_dir):
    url = f"http://127.0.0.1:{_free_port()}"
    served = {"reward": "vivid"} if reward == "remote" else {}
    with pytest.raises(ScorerConfigError, match=f"no usable server at {url}/(v1/models|health) \\(connection refused"):
        reward_zoo.get(reward, url=url, **served)
    with pytest.raises(ScorerConfigError, match=f"reward '{reward}': url must look like http://127.0.0.1:8000, got 'localhost:8000'"):
        reward_zoo.get(reward, url="localhost:8000", **served)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": str(tiny_model_dir)}, "output_dir": str(tmp_path / "run"),
                                      "rewards": [{"name": "vivid"}, {"name": reward, "kwargs": {"url": url, **served}}]}))
    result = CliRunner().invoke(app, ["align", "--recipe", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: rewards.1 ({reward}): ") and url in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _remote_reply(scores: Any) -> Reply:
    return lambda path, body: (200, json.dumps({"reward": "compressibility", "scores": scores, "failed": [False] * len(scores)}).encode(), 0.0)


FAULTS = {
    "slow": (lambda path, body: (200, b"{}", 2.0), "timed out"),
    "http 500": (lambda path, body: (500, b'{"error": "CUDA out of memory"}', 0.0), "HTTP 500: CUDA out of memory (after 2 attempts)"),
    "malformed json": (lambda path, body: (200, b'{"choices": [', 0.0), "the response is not JSON"),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("reward", ["vlm_judge", "remote"])
def test_server_faults_fail_the_samples_not_the_run(scripted, fault, reward):
    kwargs = {"reward": "compressibility"} if reward == "remote" else {}
    scorer = reward_zoo.get(reward, url=scripted.url, timeout=0.3, retries=1, backoff=0.05, **kwargs)
    scripted.reply, message = FAULTS[fault]
    started = time.monotonic()
    result = scorer(_images(2), ["a", "b"])
    assert result.failed.all() and torch.isnan(result.scores).all()
    assert all(message in error for error in result.errors.values()), result.errors
    assert time.monotonic() - started < 1.9  # bounded: 2 attempts of 0.3 s, not the server's 2 s
    requests_per_sample = 2 if fault != "malformed json" else 1  # only timeouts and 5xx are retried
    assert len(scripted.requests) == (2 if reward == "vlm_judge" else 1) * requests_per_sample


def test_a_retry_recovers_from_a_transient_500(scripted):
    calls = []

    def flaky(path, body):
        calls.append(path)
        return (503, b"busy", 0.0) if len(calls) == 1 else (200, _chat({"yes": 0.3, "no": 0.1}), 0.0)

    scripted.reply = flaky
    result = reward_zoo.get("vlm_judge", url=scripted.url, retries=1, backoff=0.01)(_images(1), ["a"])
    assert not result.failed.any() and result.scores.tolist() == [pytest.approx(0.75)] and len(calls) == 2


def test_wrong_answers_fail_the_samples(scripted):
    remote = reward_zoo.get("remote", url=scripted.url, reward="compressibility")
    scripted.reply = _remote_reply([-1.0, -2.0, -3.0])
    wrong = remote(_images(2), ["a", "b"])
    assert wrong.failed.all() and '"scores" must hold 2 values (one per image), got 3 values' in wrong.errors[0]
    scripted.reply = lambda path, body: (200, b'{"scores": [NaN, -2.5], "failed": [false, false]}', 0.0)
    nan = remote(_images(2), ["a", "b"])
    assert nan.failed.tolist() == [True, False] and nan.scores[1] == -2.5 and nan.errors[0] == "non-finite score"

    judge = reward_zoo.get("vlm_judge", url=scripted.url)
    scripted.reply = lambda path, body: (200, _chat({"Yes": 0.5, "No": 0.5}, logprob_value=float("nan")), 0.0)
    nan_logprobs = judge(_images(1), ["a"])
    assert nan_logprobs.failed.all() and "non-finite log-prob for yes/no" in nan_logprobs.errors[0]
    scripted.reply = lambda path, body: (200, _chat(content="Yes"), 0.0)  # a server without logprobs support
    no_logprobs = judge(_images(1), ["a"])
    assert no_logprobs.failed.all() and "does the server support logprobs?" in no_logprobs.errors[0]


def test_a_server_that_dies_mid_run_fails_samples(scripted):
    scripted.reply = _remote_reply([-1.0])
    remote = reward_zoo.get("remote", url=scripted.url, reward="compressibility", retries=0)
    assert not remote(_images(1)).failed.any()
    scripted.stop()
    gone = remote(_images(1))
    assert gone.failed.all() and "connection refused" in gone.errors[0]


# --- mogen serve-reward + remote ----------------------------------------------------------------------


def test_remote_compressibility_equals_in_process(servers):
    url = servers["compressibility"].url()
    health = httpx.get(f"{url}/health").json()
    assert health["reward"] == "compressibility" and health["protocol"] == 1 and health["kwargs"] == {}
    assert health["weights_present"] and health["device"] == "cpu" and health["higher_is_better"]
    remote = reward_zoo.get("remote", url=url, reward="compressibility", batch_size=3)  # two requests: 3 + 1 images
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # any floats: both quantise to 8 bits
    got, expected = remote(images, PROMPTS), reward_zoo.get("compressibility")(images, PROMPTS)
    assert torch.equal(got.scores, expected.scores) and torch.equal(got.details["jpeg_kb"], expected.details["jpeg_kb"])
    assert not got.failed.any() and remote.higher_is_better


def test_remote_vivid_with_token_equals_in_process(servers, monkeypatch):
    url = servers["vivid"].url()
    with pytest.raises(ScorerConfigError, match=rf"no usable server at {url}/health \(HTTP 401: missing or wrong bearer token"):
        reward_zoo.get("remote", url=url, reward="vivid")
    monkeypatch.setenv(TOKEN_ENV, "sekrit-token")
    with pytest.raises(ScorerConfigError, match=r"serves 'vivid', the recipe expects 'compressibility'"):
        reward_zoo.get("remote", url=url, reward="compressibility", token_env=TOKEN_ENV)
    remote = reward_zoo.get("remote", url=url, reward="vivid", token_env=TOKEN_ENV)
    assert remote.served["kwargs"] == {"contrast_weight": 0.25}
    images = _images()
    got, expected = remote(images, PROMPTS), reward_zoo.get("vivid", contrast_weight=0.25)(images, PROMPTS)
    assert torch.equal(got.scores, expected.scores)
    assert got.details.keys() == expected.details.keys() and all(torch.equal(got.details[k], expected.details[k]) for k in got.details)
    # Over --max-request-mb (0.05 MB): the server refuses with 413 and those samples fail; the scorer does not raise.
    big = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    refused = remote(big)
    assert refused.failed.all() and "HTTP 413" in refused.errors[0] and "exceeds the limit" in refused.errors[0]


# --- vlm_judge against a real VLM behind the OpenAI API -------------------------------------------------


def _first_token_probs(model_dir: Path, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The model's distribution over the answer's first token (B, V), computed here without any server, and
    each token's text stripped and lower-cased."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, use_fast=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    probs = []
    for image, prompt in zip(to_pil(images), prompts):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEMPLATE.replace("{prompt}", prompt)}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        with torch.no_grad():
            probs.append(model(**processor(text=[text], images=[image], return_tensors="pt")).logits[0, -1].float().softmax(-1))
    return torch.stack(probs), [processor.tokenizer.decode([i]).strip().lower() for i in range(len(processor.tokenizer))]


def _yes_no(probs: torch.Tensor, words: list[str], top_k: int | None = None) -> tuple[torch.Tensor, ...]:
    """score = P(yes)/(P(yes)+P(no)), P(yes) summed over every token reading "yes" (Yes, " yes", ...), counting only the
    top_k most likely tokens when given (what a server returning top_logprobs=k shows); NaN where neither is shown."""
    shown = torch.zeros_like(probs, dtype=torch.bool).scatter(1, probs.topk(top_k or probs.shape[1]).indices, True)
    p_yes = (probs * shown)[:, [i for i, w in enumerate(words) if w == "yes"]].sum(1)
    p_no = (probs * shown)[:, [i for i, w in enumerate(words) if w == "no"]].sum(1)
    return p_yes / (p_yes + p_no), p_yes, p_no


def test_vlm_judge_equals_the_model_in_process(servers, vlm_dir):
    url = servers["vlm"].url()
    images = _images(6)
    prompts = [*PROMPTS, "a red circle", "two blue squares"]
    probs, words = _first_token_probs(vlm_dir, images, prompts)
    vocab = probs.shape[1]  # every token's log-prob is returned: the score is exact, not a top-k approximation
    judge = reward_zoo.get("vlm_judge", url=f"{url}/v1", template=TEMPLATE, top_logprobs=vocab, concurrency=4)
    assert judge.model == "tiny-qwen2-vl"  # the first model /v1/models lists
    result = judge(images, prompts)
    expected, p_yes, p_no = _yes_no(probs, words)
    assert not result.failed.any()
    torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.details["p_yes"], p_yes, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.details["p_no"], p_no, rtol=1e-5, atol=1e-7)
    assert result.scores[0] != result.scores[2]  # same prompt, other image: the image reaches the model

    # With the usual top_logprobs (20) only the tokens the server shows count: here "no" is not among them.
    top = reward_zoo.get("vlm_judge", url=url, template=TEMPLATE)(images, prompts)
    expected_top, _, p_no_top = _yes_no(probs, words, top_k=20)
    assert (p_no_top == 0).all() and not top.failed.any()
    torch.testing.assert_close(top.scores, expected_top, rtol=1e-5, atol=1e-6)


# --- a recipe mixing an in-process scorer and a remote one ---------------------------------------------


def test_align_with_a_remote_scorer_trains_like_in_process(servers, tmp_path, tiny_model_dir):
    """The same recipe with compressibility in-process or behind `mogen serve-reward` gives the same LoRA, bit for bit."""
    url = servers["compressibility"].url()
    base = {
        "model": {"name": str(tiny_model_dir)}, "lora": {"rank": 4, "alpha": 8}, "prompts": {"tasks": ["count"]},
        "rollout": {"prompts_per_batch": 2, "group_size": 4},
        "sampler": {"num_steps": 4, "train_window": [0, 2], "train_steps": 2},
        "train": {"steps": 5, "sample_every": 100, "checkpoint_every": 100, "log_with": []},
    }
    in_process = [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "compressibility", "weight": 0.5}]
    remote = [in_process[0], {"name": "remote", "label": "compressibility", "weight": 0.5,
                              "kwargs": {"url": url, "reward": "compressibility"}}]
    paths = {}
    for name, rewards in (("local", in_process), ("remote", remote)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**base, "rewards": rewards, "output_dir": str(tmp_path / name)}))
    for name in ("remote", "local"):  # both in a fresh process of the same kind: same torch threads, same kernels
        run = subprocess.run([sys.executable, "-m", "mogen", "align", "--recipe", str(paths[name]), "--set", "train.steps=2"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "remote" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward/failed_fraction"] == 0 and m["reward/compressibility"] < 0 for m in metrics)
    local_run = tmp_path / "local"
    local = [json.loads(line) for line in (local_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/compressibility"] for m in local] == [m["reward/compressibility"] for m in metrics]
    a = load_file(str(tmp_path / "remote" / "lora" / "adapter.safetensors"))
    b = load_file(str(local_run / "lora" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
