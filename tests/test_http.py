"""The HTTP API and web page (FastAPI), over the real pipeline with a scripted chat model."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bots.http.app import HttpOptions, create_app
from bots.jobs import JobStore
from bots.runtime import Components
from bots.service import ReplyService
from memory.keys import user_key
from memory.store import MemoryStore
from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.orchestrator import ReplyPipeline
from tests.helpers import NoRecognizer, ScriptedChat, probe_mp4


def make_components(tmp_path: Path, stages, **env: str) -> Components:
    settings = load_settings(
        environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"), "TALKTWIN_RENDER__SIZE": "256", **env}
    )
    memory = MemoryStore.from_settings(settings)
    synthesizer, renderer = stages
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat("Paris, of course."),
        synthesizer=synthesizer,
        renderer=renderer,
        context=memory,
    )
    jobs = JobStore(memory.engine, tmp_path / "data" / "jobs")
    return Components(pipeline, memory, memory.knowledge, ReplyService(max_pending=1), jobs)


@pytest.fixture
def components(tmp_path: Path, stages) -> Iterator[Components]:
    c = make_components(tmp_path, stages)
    yield c
    c.close()


@pytest.fixture
def client(components: Components) -> Iterator[TestClient]:
    with TestClient(create_app(components, HttpOptions())) as c:
        yield c


def test_text_question_returns_answer_and_a_playable_video(client: TestClient, tmp_path: Path):
    r = client.post("/v1/reply", data={"user": "alice", "text": "What is the capital of France?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "Paris, of course." and body["question"] == "What is the capital of France?"
    assert body["transcript"] is None and body["format"] == "video" and body["timings"]["total"] > 0
    video = client.get(body["media_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "a.mp4").write_bytes(video.content)
    info = probe_mp4(tmp_path / "a.mp4")
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.duration == pytest.approx(body["duration"], abs=0.2)


def test_accept_video_mp4_returns_the_file_itself(client: TestClient):
    r = client.post("/v1/reply", data={"user": "bob", "text": "Hi"}, headers={"Accept": "video/mp4"})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content[4:8] == b"ftyp"


@pytest.mark.parametrize(
    ("data", "files", "status"),
    [
        ({"user": "carol"}, None, 422),  # neither text nor audio
        ({"user": "../../etc", "text": "hi"}, None, 422),  # user ids never reach a path
        ({"user": "carol", "text": "hi", "format": "gif"}, None, 422),
    ],
)
def test_malformed_requests_are_refused(client: TestClient, data, files, status):
    assert client.post("/v1/reply", data=data, files=files).status_code == status


def test_user_errors_come_back_typed_in_the_users_language(client: TestClient, avatar_bytes: bytes):
    r = client.post("/v1/reply", data={"user": "dan", "text": "   "}, headers={"Accept-Language": "zh-CN"})
    assert r.status_code == 400
    assert r.json() == {"error": "empty_text", "message": "消息是空的，请输入文字或发送语音。"}
    r = client.post("/v1/reply", data={"user": "dan"}, files={"audio": ("q.ogg", b"not audio", "audio/ogg")})
    assert r.status_code == 400 and r.json()["error"] == "unreadable_audio"


def test_avatar_upload_checks_for_a_face_and_forget_deletes_the_user(
    client: TestClient, components: Components, avatar_bytes: bytes
):
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (30, 30, 30)).save(blank, format="PNG")
    r = client.put("/v1/users/erin/avatar", files={"image": ("x.png", blank.getvalue(), "image/png")})
    assert r.status_code == 400 and r.json()["error"] == "no_face"
    r = client.put("/v1/users/erin/avatar", files={"image": ("me.jpg", avatar_bytes, "image/jpeg")})
    assert r.status_code == 200
    assert components.memory.avatar(user_key("http", "erin")) == avatar_bytes
    assert client.post("/v1/reply", data={"user": "erin", "text": "Hello"}).status_code == 200
    assert client.delete("/v1/users/erin").json() == {"user": "erin", "deleted": True}
    assert components.memory.avatar(user_key("http", "erin")) is None
    assert components.memory.export(user_key("http", "erin"))["conversations"] in ([], {})


def test_uploads_over_the_limit_are_refused(tmp_path: Path, stages):
    components = make_components(tmp_path, stages, TALKTWIN_LIMITS__MAX_UPLOAD_MB="0.01")
    with TestClient(create_app(components, HttpOptions())) as client:
        r = client.post(
            "/v1/reply", data={"user": "fay"}, files={"audio": ("a.ogg", b"\0" * 20_000, "audio/ogg")}
        )
    components.close()
    assert r.status_code == 413 and r.json()["error"] == "file_too_large"


def test_a_busy_user_gets_429_with_retry_after(client: TestClient, components: Components):
    components.service.admit(user_key("http", "gus"))  # a job of theirs is in work
    r = client.post("/v1/reply", data={"user": "gus", "text": "Hi"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_media_names_are_checked(client: TestClient):
    assert client.get("/v1/media/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/v1/media/" + "0" * 32 + ".mp4").status_code == 404


def test_health_metrics_docs_and_page(client: TestClient):
    client.post("/v1/reply", data={"user": "hal", "text": "Hi"})
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'talktwin_jobs_total{outcome="ok"} 1.0' in metrics
    assert 'talktwin_stage_seconds_count{stage="render"} 1.0' in metrics and "talktwin_queue_depth" in metrics
    assert "/v1/reply" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "MediaRecorder" in page.text and "/v1/reply" in page.text


def test_api_keys_are_required_beyond_loopback(components: Components):
    with pytest.raises(ConfigError, match="TALKTWIN_API_KEYS"):
        HttpOptions.from_env({"TALKTWIN_HTTP_HOST": "0.0.0.0"})
    options = HttpOptions.from_env({"TALKTWIN_HTTP_HOST": "0.0.0.0", "TALKTWIN_API_KEYS": "k1, k2"})
    with TestClient(create_app(components, options)) as client:
        assert client.post("/v1/reply", data={"user": "ivy", "text": "Hi"}).status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "nope"}).status_code == 401
        ok = client.post(
            "/v1/reply", data={"user": "ivy", "text": "Hi"}, headers={"Authorization": "Bearer k2"}
        )
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # health stays open for load balancers


def test_a_full_service_answers_429_with_an_estimate(client: TestClient, components: Components):
    components.service.max_queue = 1
    components.service.admit(user_key("http", "someone-else"))  # the only place in the queue is taken
    r = client.post("/v1/reply", data={"user": "jon", "text": "Hi"})
    assert r.status_code == 429 and r.json()["error"] == "full" and int(r.headers["Retry-After"]) >= 5


def test_a_repeated_request_with_the_same_idempotency_key_is_answered_once(
    client: TestClient, components: Components
):
    chat = components.pipeline.chat_model
    asked = len(chat.calls)
    headers = {"Idempotency-Key": "kim-question-1"}
    first = client.post("/v1/reply", data={"user": "kim", "text": "Where is Paris?"}, headers=headers)
    again = client.post("/v1/reply", data={"user": "kim", "text": "Where is Paris?"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(chat.calls) == asked + 1  # the model answered once
    video = client.post(
        "/v1/reply",
        data={"user": "kim", "text": "Where is Paris?"},
        headers={**headers, "Accept": "video/mp4"},
    )
    assert video.content == client.get(first.json()["media_url"]).content
    history = components.memory.export(user_key("http", "kim"))
    assert json.dumps(history, ensure_ascii=False).count("Where is Paris?") == 1  # one turn in memory
    # the same key from another user is another request
    other = client.post("/v1/reply", data={"user": "lee", "text": "Where is Paris?"}, headers=headers)
    assert other.status_code == 200 and "Idempotent-Replayed" not in other.headers
    assert (
        client.post(
            "/v1/reply", data={"user": "kim", "text": "Hi"}, headers={"Idempotency-Key": "../x"}
        ).status_code
        == 422
    )


def test_a_request_a_crash_interrupted_is_answered_on_retry_and_errors_replay(
    client: TestClient, components: Components
):
    key = user_key("http", "max")
    # what a crash left behind: one request started once, one that crashed the service twice
    once = components.jobs.accept("http", key, "q-once", key, key, text="Still there?")
    components.jobs.start(once)
    twice = components.jobs.accept("http", key, "q-twice", key, key, text="Crash again?")
    components.jobs.start(twice)
    components.jobs.start(twice)
    r = client.post(
        "/v1/reply", data={"user": "max", "text": "Still there?"}, headers={"Idempotency-Key": "q-once"}
    )
    assert r.status_code == 200 and r.json()["answer"] == "Paris, of course."
    lost = client.post(
        "/v1/reply",
        data={"user": "max", "text": "Crash again?"},
        headers={"Idempotency-Key": "q-twice", "Accept-Language": "zh-CN"},
    )
    assert lost.status_code == 500 and lost.json()["error"] == "job_lost"
    assert components.jobs.unfinished("http") == []
    # a clear user error is kept too: the same request gets the same answer
    for _ in range(2):
        empty = client.post(
            "/v1/reply", data={"user": "max", "text": "   "}, headers={"Idempotency-Key": "q-3"}
        )
        assert empty.status_code == 400 and empty.json()["error"] == "empty_text"
    # a refusal is not kept: once the user is free, the same key gets answered
    components.service.admit(key)  # a job of theirs is in work
    busy = client.post("/v1/reply", data={"user": "max", "text": "Hi"}, headers={"Idempotency-Key": "q-4"})
    assert busy.status_code == 429


def test_a_reply_runs_through_the_core_recording_its_attempt_and_output_and_leaving_no_blobs(
    client: TestClient, components: Components, avatar_bytes: bytes, tmp_path: Path
):
    r = client.post(
        "/v1/reply",
        data={"user": "olga", "text": "Hi", "format": "video_note"},
        files={"avatar": ("me.jpg", avatar_bytes, "image/jpeg")},  # for this reply only
        headers={"Idempotency-Key": "olga-1"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "video"  # HTTP has no round video: an ordinary one
    job = components.jobs.find("http", user_key("http", "olga"), "olga-1")
    assert job is not None and job.status == "done" and job.attempts == 1  # one attempt, counted once
    assert job.spec is not None and json.loads(job.spec)["kind"] == "video"
    assert not json.loads(job.spec)["round"]
    media = tmp_path / "data" / "media" / r.json()["media_url"].rsplit("/", 1)[-1]
    assert media.read_bytes()[4:8] == b"ftyp"
    assert list(components.core.blobs.root.iterdir()) == []  # the answer moved out, the photo gone
    assert components.memory.avatar(user_key("http", "olga")) is None  # nor kept as their avatar


@pytest.mark.real_models
def test_killed_mid_reply_a_retry_with_the_same_key_is_answered_once(models_installed, tmp_path: Path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    import httpx

    from pipeline.config import PROJECT_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
        "TALKTWIN_HTTP_PORT": str(port),
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_LLM__MAX_TOKENS": "64",  # two sentences or so: the reply only has to be in work when killed
        "TALKTWIN_LLM__TEMPERATURE": "0",
    }
    for name in ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        env.pop(name, None)

    def start() -> subprocess.Popen:
        with open(tmp_path / "stdout.txt", "w") as out:
            service = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / "run_bots.py")],
                env=env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                # healthy, and every adapter started: the banner is printed after the last one
                healthy = httpx.get(f"{base}/healthz", timeout=1).status_code == 200
                if healthy and "TalkTwin is running" in (tmp_path / "stdout.txt").read_text():
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        service.kill()
        raise RuntimeError("the service did not start")

    question = {"user": "nia", "text": "Please tell me a long story about a lighthouse keeper."}
    headers = {"Idempotency-Key": "nia-story-1"}
    service = start()
    printed = (tmp_path / "stdout.txt").read_text()
    assert f"web page and API   {base}/" in printed  # where everything is
    assert (
        "Telegram           off (set TELEGRAM_BOT_TOKEN" in printed
        and "renderer           warp on cpu" in printed
    )
    try:
        first: list[object] = []
        cut_off = threading.Thread(
            target=lambda: first.append(_post_or_error(f"{base}/v1/reply", question, headers)), daemon=True
        )
        cut_off.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/healthz", timeout=5).json()["queue_depth"] == 0:  # until it is in work
            assert time.monotonic() < deadline, "the reply never started"
            time.sleep(0.05)
        service.kill()  # kill -9, mid-reply (the job is recorded and started)
        service.wait(10)
        cut_off.join(10)
        assert isinstance(first[0], httpx.HTTPError)  # the client saw the connection drop
        service = start()
        retried = httpx.post(f"{base}/v1/reply", data=question, headers=headers, timeout=240)
        assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
        assert httpx.get(base + retried.json()["media_url"], timeout=30).content[4:8] == b"ftyp"
        again = httpx.post(f"{base}/v1/reply", data=question, headers=headers, timeout=60)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json() == retried.json()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            assert service.wait(60) == 0  # a clean stop on SIGTERM
        finally:
            service.kill()


def _post_or_error(url: str, data: dict, headers: dict) -> object:
    import httpx

    try:
        return httpx.post(url, data=data, headers=headers, timeout=240)
    except httpx.HTTPError as e:
        return e
