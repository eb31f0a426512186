"""API backends against small loopback servers: retries, backoff, timeouts, failures, usage, keys.

Every server here binds 127.0.0.1, answers a bounded number of requests, and every test is
bounded in time (backoff delays are milliseconds).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from debate_lightning.data.synthetic import generate
from debate_lightning.debate.agents import Debater, Judge
from debate_lightning.debate.engine import RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.models.api import (
    AnthropicGenerator,
    OpenAICompatibleGenerator,
    OpenAIGenerator,
    choice_scores,
)
from debate_lightning.models.base import SamplingParams, ScoringUnsupported
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.models.scripted import DeterministicGenerator

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
FAST = dict(backoff_base=0.01, backoff_max=0.05, jitter_seed=0)


# -- a scripted loopback server --------------------------------------------------------------
Reply = tuple[int, dict, float, dict]  # status, JSON body, delay seconds, headers


class FakeServer:
    """Answers POSTs with ``script(path, body, n) -> Reply`` (n counts requests with that prompt)."""

    def __init__(self, script: Callable[[str, dict, int], Reply]):
        self.script, self.requests, self.lock = script, [], threading.Lock()
        self.counts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict, headers: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client timed out and hung up
                    pass

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = json.dumps(body.get("messages"), sort_keys=True)
                with fake.lock:
                    fake.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                    n = fake.counts[key] = fake.counts.get(key, 0) + 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, out, delay, headers = fake.script(self.path, body, n)
                    time.sleep(delay)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                self._reply(status, out, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(script):
        servers.append(FakeServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": text}]


def completion(text: str, top: dict[str, float] | None = None, prompt_tokens: int = 10, completion_tokens: int = 3) -> dict:
    logprobs = None
    if top is not None:
        first = max(top, key=top.get)
        logprobs = {"content": [{"token": first, "logprob": top[first], "bytes": None,
                                 "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in top.items()]}]}
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error", "param": None, "code": None}}


def last_user(body: dict) -> str:
    return body["messages"][-1]["content"]


# -- choice_scores (pure) ----------------------------------------------------------------------
def test_choice_scores_merges_spellings_and_estimates_missing():
    top = {"A": math.log(0.5), " A": math.log(0.2), "B": math.log(0.1), "The": math.log(0.05)}
    a, b = choice_scores(top, ["A", "B"])
    assert a == pytest.approx(math.log(0.7)) and b == pytest.approx(math.log(0.1))
    # B absent: the least likely listed token minus the margin (1 nat)
    a, b = choice_scores({"A": -0.1, "The": -3.0}, ["A", "B"], margin=1.0)
    assert (a, b) == (-0.1, -4.0)
    # no choice listed at all: no information, NaN rather than a fake 50/50
    assert all(math.isnan(x) for x in choice_scores({"The": -0.1, "I": -2.0}, ["A", "B"]))
    assert all(math.isnan(x) for x in choice_scores({}, ["A", "B"]))
    assert choice_scores({"ĠB": -0.2, "▁A": -1.7}, ["A", "B"]) == [-1.7, -0.2]


# -- retries, backoff, timeouts, failures -----------------------------------------------------
def test_retries_429_then_500_then_succeeds_with_backoff(fake_server):
    def script(path, body, n):
        if n == 1:
            return 429, error(429, "rate limited"), 0.0, {"retry-after-ms": "20"}
        if n == 2:
            return 500, error(500, "boom"), 0.0, {}
        return 200, completion("A", prompt_tokens=100, completion_tokens=20), 0.0, {}

    server = fake_server(script)
    waits: list[float] = []
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url, max_retries=3, sleep=waits.append,
                                    prices={"input": 1.0, "output": 2.0}, **FAST)
    [g] = gen.generate([chat("q")], SamplingParams(max_new_tokens=8))
    assert g.error is None and g.text == "A"
    assert g.usage["attempts"] == 3 and len(server.requests) == 3
    assert g.usage["prompt_tokens"] == 100 and g.usage["completion_tokens"] == 20
    assert g.usage["cost_usd"] == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert gen.stats["retries"] == 2 and gen.stats["failures"] == 0 and gen.stats["attempts"] == 3
    # first wait honours Retry-After (20 ms > backoff), second is backoff 0.02 with jitter in [0.01, 0.02]
    assert waits[0] == pytest.approx(0.02) and 0.01 <= waits[1] <= 0.02
    gen.close()


def test_backoff_is_exponential_with_jitter_and_capped():
    gen = OpenAICompatibleGenerator("m", base_url="http://127.0.0.1:9/v1", backoff_base=1.0, backoff_max=8.0, jitter_seed=1)
    for attempt, delay in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        waits = [gen._backoff(attempt, None) for _ in range(50)]
        assert all(delay / 2 <= w <= delay for w in waits) and len(set(waits)) > 1
    assert gen._backoff(0, retry_after=100.0) == 8.0  # a server's Retry-After is capped too


def test_a_failed_request_is_recorded_and_the_rest_of_the_batch_survives(fake_server):
    def script(path, body, n):
        text = last_user(body)
        if text == "always-500":
            return 500, error(500, "internal error"), 0.0, {}
        if text == "bad-request":
            return 400, error(400, "invalid value for temperature"), 0.0, {}
        if text == "no-quota":
            body = error(429, "You exceeded your current quota")
            body["error"]["code"] = "insufficient_quota"
            return 429, body, 0.0, {}
        return 200, completion(f"ok {text}"), 0.0, {}

    server = fake_server(script)
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url, max_retries=2, sleep=lambda s: None, **FAST)
    gens = gen.generate([chat("one"), chat("always-500"), chat("bad-request"), chat("two"), chat("no-quota")], SamplingParams())
    assert [g.text for g in gens] == ["ok one", "", "", "ok two", ""]
    assert "after 1 attempt(s)" in gens[4].error and "quota" in gens[4].error  # waiting does not fix billing
    assert gens[1].error.startswith("openai_compatible request failed after 3 attempt(s)") and "HTTP 500" in gens[1].error
    assert "after 1 attempt(s)" in gens[2].error and "HTTP 400" in gens[2].error  # a 400 is not retried
    assert server.counts[json.dumps(chat("always-500"), sort_keys=True)] == 3
    assert server.counts[json.dumps(chat("bad-request"), sort_keys=True)] == 1
    assert gen.stats["failures"] == 3 and gen.stats["requests"] == 5
    gen.close()


def test_slow_responses_time_out_and_are_retried_within_bounds(fake_server):
    def script(path, body, n):
        if last_user(body) == "slow" or n == 1:
            return 200, completion("late"), 1.0, {}
        return 200, completion("fast"), 0.0, {}

    server = fake_server(script)
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url, timeout=0.25, max_retries=1, **FAST)
    start = time.monotonic()
    gens = gen.generate([chat("slow"), chat("flaky")], SamplingParams())
    assert time.monotonic() - start < 3.0
    assert gens[0].error is not None and "Timeout" in gens[0].error and "2 attempt(s)" in gens[0].error
    assert gens[1].error is None and gens[1].text == "fast" and gens[1].usage["attempts"] == 2
    gen.close()


def test_concurrency_is_limited(fake_server):
    server = fake_server(lambda path, body, n: (200, completion("x"), 0.1, {}))
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url, max_concurrency=3)
    start = time.monotonic()
    gens = gen.generate([chat(f"q{i}") for i in range(9)], SamplingParams())
    assert all(g.error is None for g in gens)
    assert 2 <= server.max_in_flight <= 3
    assert time.monotonic() - start >= 0.25  # 9 requests of 0.1 s through 3 slots: 3 waves
    gen.close()


def test_sampling_parameters_reach_the_request(fake_server):
    server = fake_server(lambda path, body, n: (200, completion("x"), 0.0, {}))
    gen = OpenAIGenerator("gpt-x", base_url=server.url, api_key_env="TEST_DL_KEY_UNSET", key_required=False)
    gen.generate([chat("q")], SamplingParams(max_new_tokens=7, temperature=0.3, top_p=0.9, seed=5, stop=["\n"], top_k=4))
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "gpt-x" and body["max_completion_tokens"] == 7 and body["temperature"] == 0.3
    assert body["top_p"] == 0.9 and body["seed"] == 5 and body["stop"] == ["\n"] and body["top_k"] == 4
    compat = OpenAICompatibleGenerator(base_url=server.url)  # model from /v1/models, max_tokens field
    compat.generate([chat("q")], SamplingParams(max_new_tokens=3))
    assert server.requests[-1][1]["model"] == "fake-model" and server.requests[-1][1]["max_tokens"] == 3


# -- keys ------------------------------------------------------------------------------------------
def test_keys_come_from_the_environment_and_never_leak(fake_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIGenerator("gpt-x")
    with pytest.raises(ValueError, match="api_key_env"):
        build_generator(ModelSpec(backend="openai", model="gpt-x", options={"api_key": SECRET}), "judge")
    with pytest.raises(ValueError, match="TEST_DL_UNSET_KEY"):
        OpenAICompatibleGenerator(base_url="http://127.0.0.1:9/v1", api_key_env="TEST_DL_UNSET_KEY")
    monkeypatch.setenv("MY_KEY", SECRET)
    server = fake_server(lambda path, body, n: (401, error(401, f"Incorrect API key provided: {SECRET}"), 0.0, {}))
    gen = build_generator(ModelSpec(backend="openai", model="gpt-x", base_url=server.url, options={"api_key_env": "MY_KEY"}), "judge")
    [g] = gen.generate([chat("q")], SamplingParams())
    assert server.requests[0][2]["authorization"] == f"Bearer {SECRET}"  # the key is sent...
    assert g.error is not None and "HTTP 401" in g.error and SECRET not in g.error  # ...never recorded
    assert SECRET not in repr(gen) and SECRET not in json.dumps(g.usage)


def test_registry_builds_every_api_backend(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert isinstance(build_generator(ModelSpec(backend="openai", model="gpt-4o-mini"), "j"), OpenAIGenerator)
    assert isinstance(build_generator(ModelSpec(backend="anthropic", model="claude-x"), "j"), AnthropicGenerator)
    g = build_generator(ModelSpec(backend="openai_compatible", base_url="http://127.0.0.1:9/v1"), "served")
    assert isinstance(g, OpenAICompatibleGenerator) and g.name == "served"
    with pytest.raises(ValueError, match="base_url"):
        build_generator(ModelSpec(backend="openai_compatible"), "served")
    with pytest.raises(ValueError, match="unknown option"):
        build_generator(ModelSpec(backend="openai", model="m", options={"max_concurency": 2}), "j")


# -- judging: log-probs, and the text fallback --------------------------------------------------
def test_choice_logprobs_from_top_logprobs(fake_server):
    def script(path, body, n):
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        if last_user(body) == "fails":
            return 500, error(500, "down"), 0.0, {}
        return 200, completion("A", top={"A": math.log(0.6), " B": math.log(0.2), "The": math.log(0.1)}), 0.0, {}

    server = fake_server(script)
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url, max_retries=0)
    scores = gen.choice_logprobs([chat("q"), chat("fails")], ["A", "B"])
    assert scores[0] == pytest.approx([math.log(0.6), math.log(0.2)])
    assert all(math.isnan(x) for x in scores[1])  # a failed request: no verdict, the round fails
    assert gen.last_errors[0] is None and "HTTP 500" in gen.last_errors[1]
    judge = Judge(gen, both_orders=False)
    assert judge._first_choice_probs([chat("q")])[0] == pytest.approx([0.75])


def test_server_without_logprobs_falls_back_to_text_verdicts(fake_server):
    server = fake_server(lambda path, body, n: (200, completion("Answer: B (80% confident)"), 0.0, {}))
    gen = OpenAICompatibleGenerator("fake-model", base_url=server.url)
    with pytest.raises(ScoringUnsupported):
        gen.choice_logprobs([chat("q")], ["A", "B"])
    assert gen.use_logprobs is False  # remembered: no more one-token requests
    assert Judge(gen, both_orders=False)._first_choice_probs([chat("q")])[0] == pytest.approx([0.2])


def test_rejected_logprobs_request_falls_back_to_text(fake_server):
    def script(path, body, n):
        if body.get("logprobs"):
            return 400, error(400, "logprobs are not supported with this model"), 0.0, {}
        return 200, completion("A | 70%"), 0.0, {}

    server = fake_server(script)
    gen = OpenAIGenerator("o-model", base_url=server.url, key_required=False)
    assert Judge(gen, both_orders=False)._first_choice_probs([chat("q")])[0] == pytest.approx([0.7])


# -- Anthropic -----------------------------------------------------------------------------------
def anthropic_message(text: str, stop_reason: str = "end_turn") -> dict:
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 42, "output_tokens": 5},
    }


def test_anthropic_messages_retries_and_text_verdicts(fake_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)

    def script(path, body, n):
        assert path == "/v1/messages"
        if n == 1:
            return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, 0.0, {}
        return 200, anthropic_message("A | 80%"), 0.0, {}

    server = fake_server(script)
    gen = AnthropicGenerator("claude-x", base_url=server.url.removesuffix("/v1"), max_retries=2,
                             prices={"input": 3.0, "output": 15.0}, **FAST)
    chats = [[{"role": "system", "content": "Judge."}, {"role": "user", "content": "Q?"}, {"role": "user", "content": "Decide."}]]
    [g] = gen.generate(chats, SamplingParams(max_new_tokens=16, temperature=0.0, stop=["</verdict>", " "]))
    assert g.error is None and g.text == "A | 80%" and g.usage["attempts"] == 2
    assert g.usage["prompt_tokens"] == 42 and g.usage["completion_tokens"] == 5
    assert g.usage["cost_usd"] == pytest.approx((42 * 3 + 5 * 15) / 1e6)
    body, headers = server.requests[-1][1], server.requests[-1][2]
    assert body["system"] == "Judge." and body["messages"] == [{"role": "user", "content": "Q?\n\nDecide."}]
    assert body["stop_sequences"] == ["</verdict>"] and "temperature" not in body and SECRET in (headers.get("x-api-key", "") + headers.get("authorization", ""))
    with pytest.raises(ScoringUnsupported):
        gen.choice_logprobs(chats, ["A", "B"])
    assert Judge(gen, both_orders=False)._first_choice_probs(chats)[0] == pytest.approx([0.8])


def test_anthropic_failure_is_recorded(fake_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    server = fake_server(lambda path, body, n: (500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}, 0.0, {}))
    gen = AnthropicGenerator("claude-x", base_url=server.url.removesuffix("/v1"), max_retries=1, **FAST)
    [g] = gen.generate([chat("q")], SamplingParams())
    assert g.text == "" and "anthropic request failed after 2 attempt(s)" in g.error and "boom" in g.error
    assert len(server.requests) == 2


# -- the engine records a failed API speech on its round -----------------------------------------
def test_failed_api_speech_marks_the_round_failed(fake_server):
    questions = generate(num_stories=1, seed=0, questions_per_story=2)
    doomed = questions[1].question

    def script(path, body, n):
        if any(doomed in m["content"] for m in body["messages"]):
            return 503, error(503, "unavailable"), 0.0, {}
        return 200, completion("My answer is right."), 0.0, {}

    server = fake_server(script)
    api = OpenAICompatibleGenerator("fake-model", base_url=server.url, max_retries=1, **FAST)
    specs = [RoundSpec(q, Format(kind="debate", num_speeches=1), ("api", "api")) for q in questions]
    results = run_rounds(specs, {"api": Debater("api", api, SamplingParams(max_new_tokens=16))}, Judge(DeterministicGenerator()))
    ok, failed = results
    assert ok.status == "ok" and ok.error is None and ok.p_a is not None and len(ok.speeches) == 2
    assert failed.status == "failed" and "HTTP 503" in failed.error and failed.p_a is None
    assert "after 2 attempt(s)" in failed.speeches[0]["error"] and failed.speeches[0]["text"] == ""


def test_failed_judge_requests_fail_their_rounds_and_resume_retries_them(fake_server, tmp_path):
    """An outage during a tournament loses nothing: rounds fail, a resume plays them again."""
    from debate_lightning.tournament.config import DataConfig, DebaterConfig, JudgeConfig, TournamentConfig
    from debate_lightning.tournament.runner import run_tournament

    outage = {"on": True}

    def script(path, body, n):
        if outage["on"]:
            return 503, error(503, "service unavailable"), 0.0, {}
        return 200, completion("B", top={"A": math.log(0.3), "B": math.log(0.6)}), 0.0, {}

    server = fake_server(script)
    cfg = TournamentConfig(
        data=DataConfig(source="synthetic", limit=2),
        models={
            "scripted": ModelSpec(backend="deterministic"),
            "api": ModelSpec(backend="openai_compatible", base_url=server.url, model="fake-model",
                             options={"max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.02}),
        },
        debaters=[DebaterConfig(name="scripted", model="scripted")],
        judge=JudgeConfig(model="api"),
        output=str(tmp_path),
    )
    first = run_tournament(cfg, progress=False)
    assert len(first) == 4 and all(r.status == "failed" and r.p_a is None for r in first)
    outage["on"] = False
    second = run_tournament(cfg, resume=True, progress=False)
    assert len(second) == 4 and all(r.status == "ok" for r in second)
    assert all(r.p_a == pytest.approx((2 / 3 + 1 / 3) / 2) for r in second)  # P(A) 1/3, swapped 2/3
