"""The job API under `/api/v1`, end to end: a gateway with two callers' API keys and a short job
lifetime, on the fake stack (real processes, scripted engines).

Start with text and with audio, the result streamed while it is still produced, the JSON
result, another caller's job and an expired job as 404, and the health and metrics aliases.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_thread import GatewayThread, running_gateway
from tests.loopback import LOOPBACK
from tests.stack import Stack
from tests.test_turns_api import audible, heard, wav_samples

pytestmark = pytest.mark.e2e

ALICE, BOB, ADMIN = "sk-jobs-alice-5e2a91c0", "sk-jobs-bob-0c7d3b18", "sk-jobs-admin-7a41e6d2"
JOB_TTL_S = 4.0
TIMEOUT = httpx.Timeout(60.0)
# Many short sentences: the fake LLM says them back one phrase each, at 50 tokens/s, so the
# reply is generated and synthesized over about a second and a half (llm_max_new_tokens: 80).
LONG = " ".join(f"Item {n} is here." for n in range(1, 21))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gateway(fake_stack: Stack) -> Iterator[GatewayThread]:
    with running_gateway(fake_stack, api_keys=[ALICE, BOB], admin_api_keys=[ADMIN],
                         turn_job_ttl_s=JOB_TTL_S) as running:
        yield running


def start(gateway: GatewayThread, key: str, headers: dict[str, str] | None = None,
          **request: Any) -> dict[str, Any]:
    response = LOOPBACK.post(f"{gateway.http}/api/v1/interaction/start", headers=auth(key) | (headers or {}),
                          timeout=TIMEOUT, **request)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job_id"] and uuid.UUID(body["session_id"])
    return body


def result(gateway: GatewayThread, key: str, job_id: str, **params: str) -> httpx.Response:
    return LOOPBACK.get(f"{gateway.http}/api/v1/interaction/result/{job_id}", headers=auth(key),
                     params=params, timeout=TIMEOUT)


def test_a_text_job_streams_its_audio_while_it_is_produced(gateway: GatewayThread) -> None:
    job = start(gateway, ALICE, json={"text": LONG})
    url = f"{gateway.http}/api/v1/interaction/result/{job['job_id']}"
    body, status_at_first_bytes = bytearray(), ""
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", url, headers=auth(ALICE)) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert "chunked" in response.headers.get("transfer-encoding", "")
        for chunk in response.iter_bytes():
            if not status_at_first_bytes:  # the job, as the first bytes reach us
                status_at_first_bytes = result(gateway, ALICE, job["job_id"], format="json").json()["status"]
            body.extend(chunk)
    assert status_at_first_bytes == "running"  # audio came before the synthesis ended
    done = result(gateway, ALICE, job["job_id"], format="json").json()
    assert done["status"] == "done" and done["transcript"] == LONG, done
    assert "Item 1 is here" in done["reply_text"] and done["audio_bytes"] == len(body) - 44
    assert audible(wav_samples(bytes(body)))


def test_an_audio_job_gives_its_texts_as_json_and_its_audio_as_ogg(gateway: GatewayThread,
                                                                   fixtures_dir: Path) -> None:
    wav = (fixtures_dir / "q_en_capital.wav").read_bytes()
    job = start(gateway, BOB, content=wav, headers={"Content-Type": "audio/wav"})
    done = result(gateway, BOB, job["job_id"], format="json", wait="true").json()
    assert done["status"] == "done" and done["transcript"] == heard(), done
    assert heard() in done["reply_text"].lower() and done["session_id"] == job["session_id"]
    timings = done["timings_ms"]
    assert timings["asr_final"] <= timings["first_token"] <= timings["first_audio"] <= timings["total"]
    ogg = LOOPBACK.get(f"{gateway.http}/api/v1/interaction/result/{job['job_id']}", timeout=TIMEOUT,
                    headers={"Accept": "audio/ogg", **auth(BOB)})
    assert ogg.status_code == 200 and ogg.content[:4] == b"OggS" and len(ogg.content) > 2000


def test_a_job_continues_its_callers_conversation(gateway: GatewayThread) -> None:
    first = start(gateway, ALICE, json={"text": "My name is Tendai."})
    result(gateway, ALICE, first["job_id"], format="json", wait="true")
    second = start(gateway, ALICE, json={"text": "Thanks.", "session_id": first["session_id"]})
    assert second["session_id"] == first["session_id"]
    assert result(gateway, ALICE, second["job_id"], format="json", wait="true").json()["status"] == "done"
    history = LOOPBACK.get(f"{gateway.http}/v1/sessions/{first['session_id']}", headers=auth(ALICE),
                        timeout=TIMEOUT).json()["history"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["My name is Tendai.", "Thanks."]
    # The same id from another caller is another conversation: nothing of Alice's is in it.
    bobs = start(gateway, BOB, json={"text": "Hello.", "session_id": first["session_id"]})
    assert result(gateway, BOB, bobs["job_id"], format="json", wait="true").json()["status"] == "done"
    theirs = LOOPBACK.get(f"{gateway.http}/v1/sessions/{first['session_id']}", headers=auth(BOB),
                       timeout=TIMEOUT).json()["history"]
    assert [m["content"] for m in theirs if m["role"] == "user"] == ["Hello."]


def test_someone_elses_or_an_unknown_job_is_404(gateway: GatewayThread) -> None:
    job = start(gateway, ALICE, json={"text": "Private words."})
    assert result(gateway, ALICE, job["job_id"], format="json", wait="true").status_code == 200
    for key, job_id in ((BOB, job["job_id"]), (ALICE, "turn-" + "0" * 32), (BOB, "nonsense")):
        for fmt in ("json", "wav"):
            response = result(gateway, key, job_id, format=fmt)
            assert response.status_code == 404 and response.json()["error"] == "job_not_found"


def test_an_expired_job_is_404(gateway: GatewayThread) -> None:
    job = start(gateway, ALICE, json={"text": "Short."})
    assert result(gateway, ALICE, job["job_id"], format="json", wait="true").json()["status"] == "done"
    deadline = time.monotonic() + JOB_TTL_S + 10
    while result(gateway, ALICE, job["job_id"], format="json").status_code == 200:
        assert time.monotonic() < deadline, "the job outlived its lifetime by far"
        time.sleep(0.5)
    assert result(gateway, ALICE, job["job_id"], format="json").json()["error"] == "job_not_found"


def test_health_is_open_and_metrics_need_an_admin(gateway: GatewayThread) -> None:
    health = LOOPBACK.get(f"{gateway.http}/api/v1/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["ready"] is True, health.text
    assert LOOPBACK.get(f"{gateway.http}/api/v1/metrics", timeout=TIMEOUT).status_code == 401
    user = LOOPBACK.get(f"{gateway.http}/api/v1/metrics", headers=auth(ALICE), timeout=TIMEOUT)
    assert user.status_code == 403
    metrics = LOOPBACK.get(f"{gateway.http}/api/v1/metrics", headers=auth(ADMIN), timeout=TIMEOUT)
    assert metrics.status_code == 200 and "inzwa_llm_token_interval_ms" in metrics.text
    assert LOOPBACK.post(f"{gateway.http}/api/v1/interaction/start", json={"text": "hi"},
                      timeout=TIMEOUT).status_code == 401
