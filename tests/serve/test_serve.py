"""``serve`` on loopback over a tiny random Llama: the OpenAI protocol, errors, batching, and
debate rounds (and a whole tournament) judged by the served model through the OpenAI backend."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from debate_lightning.data.synthetic import generate  # noqa: E402
from debate_lightning.debate.agents import Debater, Judge  # noqa: E402
from debate_lightning.debate.engine import RoundSpec, run_rounds  # noqa: E402
from debate_lightning.debate.formats import Format  # noqa: E402
from debate_lightning.models.api import OpenAICompatibleGenerator, OpenAIGenerator  # noqa: E402
from debate_lightning.models.base import Generator, SamplingParams  # noqa: E402
from debate_lightning.models.registry import ModelSpec, build_generator  # noqa: E402
from debate_lightning.models.scripted import DeterministicGenerator  # noqa: E402
from debate_lightning.serve import make_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random Llama with the embedded tokenizer.

    Its output layer is zero except the rows of "A" (+v) and "B" (-v), so exactly one of the
    judge's answers is always among the top log-probs, as with a real instruction-tuned judge.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from debate_lightning.models.embedded import prepare

    tok = AutoTokenizer.from_pretrained(prepare())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    [a], [b] = tok.encode("A", add_special_tokens=False), tok.encode("B", add_special_tokens=False)
    with torch.no_grad():
        v = torch.randn(32) * 3
        model.lm_head.weight.zero_()
        model.lm_head.weight[a] = v
        model.lm_head.weight[b] = -v
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def local(tiny_dir):
    from debate_lightning.models.hf import HFGenerator

    return HFGenerator(str(tiny_dir), dtype="float32", name=MODEL)


def start(generator: Generator, **kwargs):
    return make_server(generator, port=0, model_name=MODEL, **kwargs).start()


@pytest.fixture(scope="module")
def server(local):
    s = start(local)
    yield s
    s.close()


def http(method: str, url: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- the protocol ------------------------------------------------------------------------------
def test_models_health_and_loopback(server):
    assert server.server_address[0] == "127.0.0.1"
    status, body = http("GET", server.url + "/models")
    assert status == 200 and body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL]
    assert http("GET", server.url + f"/models/{MODEL}")[1]["id"] == MODEL
    status, body = http("GET", server.url.removesuffix("/v1") + "/health")
    assert status == 200 and body["status"] == "ok" and "generate_calls" in body


OK = {"model": MODEL, "messages": user("hi"), "max_tokens": 2}


@pytest.mark.parametrize(
    "method,path,body,status,param",
    [
        ("POST", "/chat/completions", b"{not json", 400, None),
        ("POST", "/chat/completions", b"[1, 2]", 400, None),
        ("POST", "/chat/completions", {**OK, "model": "gpt-9"}, 404, "model"),
        ("POST", "/chat/completions", {**OK, "messages": []}, 400, "messages"),
        ("POST", "/chat/completions", {**OK, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("POST", "/chat/completions", {**OK, "temperature": 5}, 400, "temperature"),
        ("POST", "/chat/completions", {**OK, "max_tokens": 0}, 400, "max_tokens"),
        ("POST", "/chat/completions", {**OK, "n": 0}, 400, "n"),
        ("POST", "/chat/completions", {**OK, "top_logprobs": 3}, 400, "top_logprobs"),
        ("POST", "/chat/completions", {**OK, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
        ("POST", "/chat/completions", {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("POST", "/chat/completions", {**OK, "seed": "x"}, 400, "seed"),
        ("POST", "/chat/completions", {**OK, "stream": True}, 400, "stream"),
        ("GET", "/chat/completions", None, 405, None),
        ("POST", "/models", {}, 405, None),
        ("DELETE", "/models", None, 405, None),
        ("GET", "/nowhere", None, 404, None),
        ("GET", "/models/gpt-9", None, 404, "model"),
    ],
)
def test_errors_have_openai_shape_and_status(server, method, path, body, status, param):
    got, out = http(method, server.url + path, body)
    assert got == status
    assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"]
    assert out["error"]["param"] == param


def test_generation_failure_is_a_500(tiny_dir):
    class Broken(Generator):
        name = MODEL

        def generate(self, chats, params):
            raise RuntimeError("CUDA out of memory (simulated)")

    s = start(Broken())
    try:
        status, out = http("POST", s.url + "/chat/completions", OK)
        assert status == 500 and out["error"]["type"] == "server_error" and "out of memory" in out["error"]["message"]
        stats = http("GET", s.url + "/stats")[1]
        assert stats["errors"] == 1 and stats["http_5xx"] == 1
        status, out = http("POST", s.url + "/chat/completions", {**OK, "logprobs": True})
        assert status == 400 and out["error"]["param"] == "logprobs"
    finally:
        s.close()


def test_chat_completions_through_the_sdk(server):
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=user("Say something."), max_tokens=3, temperature=1.0, n=3, seed=7)
    assert len(r.choices) == 3 and all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.completion_tokens <= 9 and r.usage.prompt_tokens > 0
    again = client.chat.completions.create(model=MODEL, messages=user("Say something."), max_tokens=3, temperature=1.0, n=3, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded
    long = client.chat.completions.create(model=MODEL, messages=user("Go on."), max_completion_tokens=4, temperature=0.0)
    text = long.choices[0].message.content
    if long.choices[0].finish_reason == "length" and len(text) > 1:
        stop = text[len(text) // 2]
        cut = client.chat.completions.create(model=MODEL, messages=user("Go on."), max_tokens=4, temperature=0.0, stop=[stop])
        assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"


def test_logprobs_are_the_local_models(server, local):
    """The served first-token log-prob of the judge's answer equals the local model's score."""
    chats = [user("Which answer is correct? Reply A or B."), user("Pick one: A or B?")]
    served = OpenAICompatibleGenerator(base_url=server.url, max_retries=0)
    gens = served.generate(chats, SamplingParams(max_new_tokens=2, temperature=0.0, logprobs=True, top_logprobs=5))
    for g in gens:
        assert len(g.top_logprobs) == g.num_tokens and all(len(t) == 5 for t in g.top_logprobs)
        assert g.logprob <= 0
    remote = served.choice_logprobs(chats, ["A", "B"])
    exact = local.choice_logprobs(chats, ["A", "B"])
    for r, e in zip(remote, exact):
        top = max(range(2), key=lambda i: e[i])  # the answer the model prefers is listed exactly
        assert r[top] == pytest.approx(e[top], abs=1e-4)
        assert r[1 - top] < r[top]  # the other is the estimated floor
    # the one-token judge path (one forward pass, no generate) answers what generate would
    one = SamplingParams(max_new_tokens=1, temperature=0.0, logprobs=True, top_logprobs=3)
    assert [g.text for g in served.generate(chats, one)] == [g.text for g in local.generate(chats, one)]
    served.close()


def test_16_simultaneous_requests_are_batched(local):
    s = start(local, batch_window=0.5, max_batch_size=32)
    try:
        client = OpenAICompatibleGenerator(base_url=s.url, max_concurrency=16, max_retries=0)
        before = http("GET", s.url + "/stats")[1]
        gens = client.generate([user(f"question {i}") for i in range(16)], SamplingParams(max_new_tokens=2, temperature=0.0))
        assert all(g.error is None for g in gens)
        stats = http("GET", s.url + "/stats")[1]
        calls = stats["generate_calls"] - before["generate_calls"]
        assert stats["requests"] - before["requests"] == 16
        assert calls <= 4 and stats["batched_requests_max"] >= 8, stats
        client.close()
    finally:
        s.close()


# -- debates judged by the served model -----------------------------------------------------------
def test_debate_round_judged_by_served_model_through_the_openai_backend(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    judge_gen = build_generator(ModelSpec(backend="openai", model=MODEL, base_url=server.url), "served-judge")
    assert isinstance(judge_gen, OpenAIGenerator)
    questions = generate(num_stories=1, seed=0, questions_per_story=2)
    debater = Debater("scripted", DeterministicGenerator("I am right: <quote>the</quote>."), SamplingParams(max_new_tokens=16))
    specs = [RoundSpec(q, Format(kind="debate", num_speeches=1), ("scripted", "scripted")) for q in questions]
    results = run_rounds(specs, {"scripted": debater}, Judge(judge_gen, both_orders=True, name="served-judge"))
    for r in results:
        assert r.status == "ok", r.error
        assert r.judge == "served-judge" and len(r.p_a_orders) == 2 and 0.0 <= r.p_a <= 1.0
        assert all(not math.isnan(p) for p in r.p_a_orders)
    assert judge_gen.stats["requests"] == 4 and judge_gen.stats["failures"] == 0  # 2 rounds x 2 orders
    judge_gen.close()


def test_tournament_api_config_runs_with_served_judge(server, tmp_path, monkeypatch):
    """configs/tournament_api.yaml end to end, its judge pointed at `serve` (debaters scripted)."""
    from debate_lightning.tournament.cli import parse_tournament_args
    from debate_lightning.tournament.runner import run_tournament

    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    cfg, _ = parse_tournament_args(["--config", str(ROOT / "configs/tournament_api.yaml"), "--output", str(tmp_path)])
    assert cfg.models[cfg.judge.model].backend == "openai"
    cfg.models[cfg.judge.model].base_url = server.url
    cfg.models[cfg.judge.model].model = MODEL
    cfg.models["embedded"] = ModelSpec(backend="deterministic", options={"template": "My answer is right."})
    cfg.data.limit = 2
    results = run_tournament(cfg, progress=False)
    assert len(results) == 4 and all(r.status == "ok" for r in results), [r.error for r in results]
    saved = (tmp_path / "config.yaml").read_text()
    assert "sk-local-test" not in saved and "sk-local-test" not in (tmp_path / "rounds.jsonl").read_text()


# -- the command line ------------------------------------------------------------------------------
def test_serve_command_starts_answers_and_stops(tiny_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "debate_lightning", "serve", "--model", str(tiny_dir), "--name", MODEL,
           "--port", str(port), "--dtype", "float32", "--max-batch-size", "8"]
    # Output goes to a file, not a pipe: a pipe nobody reads blocks the server once it fills.
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                status, body = http("GET", url + "/models")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "serve did not start within 180 s"
                time.sleep(0.5)
        assert status == 200 and body["data"][0]["id"] == MODEL
        status, out = http("POST", url + "/chat/completions", {"model": MODEL, "messages": user("hi"), "max_tokens": 2})
        assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"
    finally:
        # SIGTERM: a SIGINT may never arrive (a shell ignores it for background jobs, and CI may
        # run these tests as one); the server treats both alike.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"serve did not stop within 60 s of SIGTERM; its output:\n{log_path.read_text()[-3000:]}") from None
        finally:
            log.close()
    assert code == 0, log_path.read_text()[-3000:]
    assert "serving 'tiny'" in log_path.read_text() and "serve: stopped" in log_path.read_text()


@pytest.mark.slow
def test_embedded_model_served_judges_like_the_local_one(monkeypatch):
    """The real SmolLM2 behind `serve`: its served first-token verdict matches local scoring."""
    from debate_lightning.models.hf import HFGenerator

    local_model = HFGenerator("embedded", dtype="float32", name="smollm2")  # make setup installs it
    s = make_server(local_model, port=0, model_name="smollm2").start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
        served = OpenAIGenerator("smollm2", base_url=s.url, max_retries=0)
        questions = generate(num_stories=1, seed=0, questions_per_story=1)
        debater = Debater("scripted", DeterministicGenerator("My answer is right."), SamplingParams(max_new_tokens=8))
        specs = [RoundSpec(q, Format(kind="debate", num_speeches=1), ("scripted", "scripted")) for q in questions]
        remote = run_rounds(specs, {"scripted": debater}, Judge(served))[0]
        here = run_rounds(specs, {"scripted": debater}, Judge(local_model))[0]
        assert remote.status == "ok", remote.error
        assert remote.p_a_orders == pytest.approx(here.p_a_orders, abs=0.05)
        served.close()
    finally:
        s.close()
