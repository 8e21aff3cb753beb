"""The Gemini simulator: answers the real google-genai client, injects faults reproducibly."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel, Field

from vlmprobe.sim import GeminiSimulator

# google-genai 3.6.1 subclasses aiohttp.ClientSession for its default session, which aiohttp
# 3.14 deprecates; this file drives the SDK's defaults on purpose (the Teacher passes its own).
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

MODEL = "gemini-sim-flash"
SECRET = "sk-sim-test-secret-0042"


class QAItem(BaseModel):
    answer_type: Literal["yes_no", "multiple_choice", "open"]
    choices: list[str]
    answer: str
    verified: bool
    confidence: float = Field(ge=0, le=1)


class QAList(BaseModel):
    items: list[QAItem] = Field(min_length=2, max_length=6)
    note: str | None = None


def _post(sim: GeminiSimulator, body: dict, *, key: str | None = SECRET, model: str = MODEL) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{sim.base_url}/v1beta/models/{model}:generateContent",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"x-goog-api-key": key} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def _body(prompt: str = "Is the red car parked left of the tree?", schema: dict | None = None) -> dict:
    schema = schema or QAList.model_json_schema()
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema},
    }


async def _ask_with_sdk(base_url: str, images: list[tuple[bytes, str]], prompt: str) -> types.GenerateContentResponse:
    client = genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"))
    try:
        contents = [types.Part.from_bytes(data=d, mime_type=m) for d, m in images] + [prompt]
        config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=QAList)
        return await client.aio.models.generate_content(model=MODEL, contents=contents, config=config)
    finally:
        await client.aio.aclose()
        client.close()


def test_real_client_gets_a_parsed_answer_with_sensible_qa_and_usage():
    prompt = "Ask about the striped umbrella on the beach."
    with GeminiSimulator(port=0, seed=3) as sim:
        response = asyncio.run(_ask_with_sdk(sim.base_url, [(b"\x89PNG fake", "image/png")] * 2, prompt))
        stats = sim.stats()

    answer = response.parsed
    assert isinstance(answer, QAList)
    for item in answer.items:
        if item.answer_type == "yes_no":
            assert item.answer in ("yes", "no") and item.choices == []
        elif item.answer_type == "multiple_choice":
            assert 3 <= len(item.choices) <= 4 and item.answer in item.choices
        else:
            assert item.choices == [] and item.answer
    usage = response.usage_metadata
    assert usage.prompt_token_count == -(-len(prompt) // 4) + 2 * 258
    # No thinking budget was sent, so the model thought; thinking counts in the total
    assert usage.thoughts_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    assert stats["prompt_tokens"] == usage.prompt_token_count
    assert stats["by_status"] == {"200": 1} and stats["by_model"] == {MODEL: 1}


def test_answers_follow_json_schema_refs_and_are_deterministic_per_seed():
    with GeminiSimulator(port=0, seed=1) as sim:
        first = _post(sim, _body())[1]["candidates"][0]["content"]["parts"][0]["text"]
        again = _post(sim, _body())[1]["candidates"][0]["content"]["parts"][0]["text"]
    with GeminiSimulator(port=0, seed=2) as other:
        reseeded = _post(other, _body())[1]["candidates"][0]["content"]["parts"][0]["text"]

    assert "$defs" in json.dumps(QAList.model_json_schema())  # the schema under test uses $ref
    QAList.model_validate_json(first)
    assert first == again
    assert reseeded != first


def test_verified_rate_is_configurable():
    schema = {"type": "OBJECT", "properties": {"verified": {"type": "BOOLEAN"}}, "required": ["verified"]}
    body = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseSchema": schema}}
    with GeminiSimulator(port=0, verify_true_rate=0.0) as never:
        answers = [json.loads(_post(never, {**body, "n": i})[1]["candidates"][0]["content"]["parts"][0]["text"]) for i in range(5)]
    assert all(a == {"verified": False} for a in answers)


def test_faults_follow_the_seeded_plan_and_repeat():
    options = dict(rate_429=0.3, rate_503=0.2, rate_malformed=0.2, retry_delay_s=1.5, seed=7)
    runs = []
    for _ in range(2):
        with GeminiSimulator(port=0, **options) as sim:
            runs.append([_post(sim, _body()) for _ in range(20)])
            planned = [sim.planned_fault(i) for i in range(20)]
    assert [s for s, _ in runs[0]] == [s for s, _ in runs[1]]
    assert {"429", "503", "malformed", None} <= set(planned)

    for fault, (status, payload) in zip(planned, runs[0]):
        if fault == "429":
            assert status == 429 and payload["error"]["status"] == "RESOURCE_EXHAUSTED"
            (retry_info,) = payload["error"]["details"]
            assert retry_info == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
        elif fault == "503":
            assert status == 503 and payload["error"]["status"] == "UNAVAILABLE"
        else:
            assert status == 200
            text = payload["candidates"][0]["content"]["parts"][0]["text"]
            if fault == "malformed":
                with pytest.raises(ValueError):
                    json.loads(text)
            else:
                QAList.model_validate_json(text)


def test_quota_is_per_model_then_429_without_retry_info():
    with GeminiSimulator(port=0, quota=2) as sim:
        statuses = [_post(sim, _body())[0] for _ in range(3)]
        status, payload = _post(sim, _body())
        other_model = _post(sim, _body(), model="gemini-other")[0]
    assert statuses == [200, 200, 429]
    assert status == 429 and "details" not in payload["error"]
    assert other_model == 200


def test_bad_requests_are_400_and_unknown_paths_404():
    image = {"inlineData": {"mimeType": "application/x-nope", "data": base64.b64encode(b"x").decode()}}
    with GeminiSimulator(port=0) as sim:
        assert _post(sim, {"contents": [{"parts": [image]}]})[0] == 400
        assert _post(sim, {"contents": []})[0] == 400
        request = urllib.request.Request(f"{sim.base_url}/v1beta/models/x:countTokens", data=b"{}", headers={"x-goog-api-key": "k"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        caught.value.close()
    assert caught.value.code == 404


def test_api_key_is_required_and_never_logged_or_counted(caplog):
    caplog.set_level(logging.DEBUG)
    with GeminiSimulator(port=0) as sim:
        status, payload = _post(sim, _body(), key=None)
        assert _post(sim, _body())[0] == 200
        with urllib.request.urlopen(f"{sim.base_url}/stats", timeout=10) as response:
            served_stats = json.loads(response.read())
        stats = sim.stats()
    assert status == 403 and payload["error"]["status"] == "PERMISSION_DENIED"
    assert served_stats["requests"] == 1 and served_stats["by_status"] == {"200": 1}
    assert "generateContent -> 200" in caplog.text  # the simulator does log requests
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(stats) and SECRET not in json.dumps(served_stats)


def test_refuses_a_non_loopback_host():
    with pytest.raises(ValueError, match="only binds loopback"):
        GeminiSimulator(host="0.0.0.0")


def test_cli_serves_on_a_free_port_and_stops_on_sigterm(tmp_path: Path):
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vlmprobe.sim.server", "--port", "0", "--port-file", str(port_file), "--quota", "5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
            assert json.loads(response.read())["requests"] == 0
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert not port_file.exists()


# ---------------------------------------------------------------- quotas, forced errors, answers


def _details(payload: dict) -> dict[str, dict]:
    return {d["@type"].rsplit(".", 1)[1]: d for d in payload["error"].get("details", [])}


def test_per_minute_request_quota_answers_429_with_its_name_and_when_a_slot_frees():
    with GeminiSimulator(port=0, rpm=3, quota_window_s=0.5) as sim:
        answers = [_post(sim, _body(f"q{i}")) for i in range(4)]
        time.sleep(0.6)  # the window has moved past the first three
        after = _post(sim, _body("later"))[0]
        stats = sim.stats()
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    details = _details(answers[3][1])
    assert details["QuotaFailure"]["violations"][0]["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    delay = details["RetryInfo"]["retryDelay"]
    assert delay.endswith("s") and 0 < float(delay[:-1]) <= 0.5
    assert after == 200 and stats["quota_rejections"] == {"rpm": 1}


def test_per_minute_token_quota_counts_text_and_image_tiles():
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (800, 300), "red").save(png, format="PNG")  # 3 x 1 tiles of 384 px
    image = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png.getvalue()).decode()}}
    body = {"contents": [{"parts": [image, {"text": "abcdefgh"}]}]}  # 2 text tokens + 3 x 258
    with GeminiSimulator(port=0, tpm=2 * (3 * 258 + 2)) as sim:
        statuses = [_post(sim, {**body, "n": i})[0] for i in range(3)]
        status, payload = _post(sim, {"contents": [{"parts": [{"text": "tiny"}]}]})
        log = sim.request_log()
    assert statuses == [200, 200, 429] and status == 429  # a full window refuses even a small request
    assert log[0]["prompt_tokens"] == 3 * 258 + 2
    assert _details(payload)["QuotaFailure"]["violations"][0]["quotaId"].endswith("InputTokensPerModelPerMinute")


def test_per_day_quota_names_the_daily_quota_like_gemini():
    with GeminiSimulator(port=0, rpd=1) as sim:
        first = _post(sim, _body())[0]
        status, payload = _post(sim, _body())
    assert first == 200 and status == 429
    (violation,) = _details(payload)["QuotaFailure"]["violations"]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel" and violation["quotaValue"] == "1"


@pytest.mark.parametrize("fail, code, status", [
    ("invalid_key", 400, "INVALID_ARGUMENT"), ("401", 401, "UNAUTHENTICATED"),
    ("403", 403, "PERMISSION_DENIED"), ("404", 404, "NOT_FOUND"),
])
def test_forced_failures_answer_with_geminis_error_bodies(fail, code, status):
    with GeminiSimulator(port=0, fail=fail) as sim:
        got, payload = _post(sim, _body())
    assert got == code and payload["error"]["status"] == status
    if fail == "invalid_key":
        assert _details(payload)["ErrorInfo"]["reason"] == "API_KEY_INVALID"
    if fail == "404":
        assert f"models/{MODEL} is not found" in payload["error"]["message"]


def test_only_listed_models_exist():
    with GeminiSimulator(port=0, models=[MODEL]) as sim:
        assert _post(sim, _body())[0] == 200
        assert _post(sim, _body(), model="gemini-9")[0] == 404


def test_safety_blocked_max_tokens_and_non_json_answers():
    def answer(**rates: float) -> tuple[int, object]:
        with GeminiSimulator(port=0, **rates) as sim:
            request = urllib.request.Request(
                f"{sim.base_url}/v1beta/models/{MODEL}:generateContent", data=json.dumps(_body()).encode(),
                headers={"Content-Type": "application/json", "x-goog-api-key": SECRET})
            with urllib.request.urlopen(request, timeout=10) as response:
                data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    _, safety = answer(rate_safety=1.0)
    assert safety["candidates"][0]["finishReason"] == "SAFETY" and "content" not in safety["candidates"][0]
    _, blocked = answer(rate_blocked=1.0)
    assert blocked["promptFeedback"]["blockReason"] == "SAFETY" and "candidates" not in blocked
    _, cut = answer(rate_max_tokens=1.0)
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS"
    with pytest.raises(ValueError):
        json.loads(cut["candidates"][0]["content"]["parts"][0]["text"])
    status, page = answer(rate_non_json=1.0)
    assert status == 200 and page.startswith(b"<!DOCTYPE html>")


def test_max_output_tokens_cuts_the_answer_and_thinking_budget_zero_turns_thinking_off():
    def body(**config: object) -> dict:
        b = _body()
        b["generationConfig"].update(config)
        return b

    with GeminiSimulator(port=0) as sim:
        whole = _post(sim, body(thinkingConfig={"thinkingBudget": 0}))[1]
        cut = _post(sim, body(thinkingConfig={"thinkingBudget": 0}, maxOutputTokens=5))[1]
        thinking = _post(sim, body(thinkingConfig={"thinkingBudget": 100}))[1]
    assert "thoughtsTokenCount" not in whole["usageMetadata"]
    assert whole["candidates"][0]["finishReason"] == "STOP"
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS" and cut["usageMetadata"]["candidatesTokenCount"] <= 5
    assert 0 < thinking["usageMetadata"]["thoughtsTokenCount"] <= 100
    # the same answer, whatever the length limits
    assert thinking["candidates"][0]["content"] == whole["candidates"][0]["content"]


def test_request_log_counts_repeats_of_the_same_body(tmp_path: Path):
    log_file = tmp_path / "requests.jsonl"
    with GeminiSimulator(port=0, rate_503=0.5, seed=4, request_log=str(log_file)) as sim:
        for prompt in ("same", "same", "other"):
            _post(sim, _body(prompt))
        with urllib.request.urlopen(f"{sim.base_url}/requests", timeout=10) as response:
            served = json.loads(response.read())["requests"]
        log = sim.request_log()
    assert served == log and [e["n"] for e in log] == [0, 1, 2]
    assert log[0]["sha256"] == log[1]["sha256"] != log[2]["sha256"]
    assert {e["status"] for e in log} <= {200, 503} and all(e["model"] == MODEL for e in log)
    assert [json.loads(line) for line in log_file.read_text().splitlines()] == log
    assert SECRET not in log_file.read_text()
