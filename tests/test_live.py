"""Live conversations over WebRTC (/v1/live): a real aiortc client against the real stack.

The client's microphone plays a question spoken by Piper; the server hears it with the real Silero
VAD and Whisper, answers with a scripted chat model, speaks with Piper and draws with warp at 256 px.
Everything goes over real WebRTC (ICE, DTLS-SRTP, Opus, VP8) on this machine's own addresses.
Waits are generous and nothing is timed: the machine may be busy.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from bots.http.app import HttpOptions, create_app
from bots.live import hub_for
from bots.live.client import LiveClient, to_mic
from bots.live.hub import LiveHub
from bots.runtime import Components
from memory.keys import user_key
from pipeline.config import load_settings
from pipeline.orchestrator import ReplyPipeline
from pipeline.types import VoiceSettings
from tests.live_helpers import live_stack, live_threads, poster, until

ANSWER = (
    "Paris is the capital of France. It sits on the river Seine, in the north of the country. "
    "Many people say it is at its loveliest in the spring."
)
WAIT_S = 180  # for anything that involves Whisper on a busy machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Components, ReplyPipeline]]:
    yield from live_stack(tmp_path_factory.mktemp("live"), ANSWER)


@pytest.fixture(scope="module")
def question(stack) -> np.ndarray:
    """'What is the capital of France?' as a microphone hears it (48 kHz int16)."""
    _, pipeline = stack
    speech = pipeline.synthesizer.synthesize("What is the capital of France?", "en", VoiceSettings())
    return to_mic(speech.audio.samples, speech.audio.sample_rate)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_a_spoken_question_is_heard_answered_and_can_be_interrupted(stack, question):
    components, pipeline = stack
    post = poster(components)

    async def talk() -> LiveClient:
        client = LiveClient()
        status, body = await client.connect(post, "alice")
        assert status == 200, body
        assert body["type"] == "answer" and "m=audio" in body["sdp"] and "m=video" in body["sdp"]
        try:
            await client.wait_event("idle", WAIT_S)  # the avatar is ready and the events channel open
            client.mic.say(np.zeros(12000, np.int16))  # a moment of silence first
            client.mic.say(question)
            heard = await client.wait_event("heard", WAIT_S)
            assert {"capital", "france"} <= words(heard["text"]), heard
            assert heard["language"] == "en"
            first = await client.wait_event("answer", WAIT_S)
            assert first["text"] == "Paris is the capital of France."
            assert client.events("speaking"), "speaking comes before the first sentence"
            # answer audio arrives (Opus, decoded), and video frames at 256 px
            await client.wait_for(lambda: max(client.got.audio_rms[-100:], default=0) > 0.02, WAIT_S)
            await client.wait_for(lambda: len(client.got.video_times) >= 50, WAIT_S)
            assert client.got.video_size == (256, 256)

            # barge-in: the user speaks while the twin talks; it stops and hears them out
            client.mic.say(question)
            stopped = await client.wait_for(
                lambda: [e for e in client.events("idle") if e.get("interrupted")], WAIT_S
            )
            assert stopped
            await client.wait_event("heard", WAIT_S, after=1)
            # this time the answer is heard to the end: idle (not interrupted) after the last sentence
            await client.wait_for(lambda: len(client.events("answer")) >= 1 + 3, WAIT_S)
            await client.wait_for(
                lambda: len([e for e in client.events("idle") if not e.get("interrupted")]) >= 2, WAIT_S
            )
            assert not client.events("error"), client.events("error")
        finally:
            await client.close()
        return client

    client = asyncio.run(talk())
    hub = hub_for(pipeline)
    asyncio.run(until(lambda: not hub.sessions, WAIT_S))
    assert hub.finished[-1]["reason"] in ("hangup", "connection_failed")
    assert hub.finished[-1]["frames"] > 0
    assert not live_threads(), live_threads()  # nothing left running
    turns = components.memory.export(user_key("http", "alice"))["conversations"]["http:alice"]["turns"]
    assert len(turns) == 2, turns
    assert turns[0]["assistant"].startswith("Paris is the capital of France.")
    assert "cut off" in turns[0]["assistant"] and ANSWER not in turns[0]["assistant"]
    assert turns[1]["assistant"] == ANSWER
    assert "capital" in words(turns[1]["user"])  # "France", its last word, was once lost under load
    assert len(client.events("speaking")) == 2


def test_bad_offers_get_a_clear_400(stack):
    components, _ = stack
    post = poster(components)

    async def run() -> None:
        status, body = await post({"sdp": "this is not SDP", "type": "offer", "user": "bob"})
        assert status == 400 and body["error"] == "bad_sdp" and "SDP" in body["message"], body
        status, body = await post({"sdp": "v=0", "type": "answer", "user": "bob"})
        assert status == 400 and body["error"] == "bad_offer"
        status, body = await post({"sdp": "v=0", "type": "offer", "user": "../etc"})
        assert status == 422
        # a well-formed offer without a microphone
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("events")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, body = await post({"sdp": pc.localDescription.sdp, "type": "offer", "user": "bob"})
        await pc.close()
        assert status == 400 and body["error"] == "no_audio", body

    asyncio.run(run())
    assert not hub_for(stack[1]).sessions


def test_a_second_session_beyond_the_limit_is_told_to_wait(stack):
    components, pipeline = stack
    post = poster(components)

    async def run() -> None:
        first, second = LiveClient(), LiveClient()
        try:
            status, _ = await first.connect(post, "carol")
            assert status == 200
            status, body = await second.connect(post, "dave")
            assert status == 429 and body["error"] == "busy", body
            assert re.fullmatch(r"busy, try again in \d+ s", body["message"])
            assert int(body["retry-after"]) >= 1
            await first.wait_event("idle", WAIT_S)
        finally:
            await first.close()
            await second.close()

    asyncio.run(run())
    hub = hub_for(pipeline)
    asyncio.run(until(lambda: not hub.sessions, WAIT_S))
    assert not live_threads(), live_threads()


def test_a_silent_session_ends_after_the_idle_timeout(stack):
    _, pipeline = stack
    settings = pipeline.settings
    quick = settings.model_copy(update={"live": settings.live.model_copy(update={"idle_timeout_s": 2.0})})
    hub = LiveHub(pipeline, quick)

    async def run() -> LiveClient:
        client = LiveClient(with_video=False)

        async def post(body: dict) -> tuple[int, dict]:
            return await asyncio.to_thread(hub.offer, {**body, "user": "http:erin"})

        try:
            status, body = await client.connect(post, "erin")
            assert status == 200, body
            await client.wait_event("error", WAIT_S)
        finally:
            await client.close()
        return client

    try:
        client = asyncio.run(run())
        assert client.events("error")[0]["error"] == "idle_timeout"
        assert "nobody spoke" in client.events("error")[0]["message"]
        asyncio.run(until(lambda: not hub.sessions, WAIT_S))
        assert hub.finished[-1]["reason"] == "idle_timeout"
    finally:
        hub.close()
    assert not live_threads(), live_threads()


def test_with_the_models_in_their_own_process_the_session_runs_there(tmp_path: Path, question):
    """Embedded mode's default: only the offer and answer cross the pipe; the media flow between the
    client and the models' process, and the turn lands in the user's memory."""
    from bots.core.model_process import ModelProcessExecutor
    from tests.test_llm import FakeOpenAIServer

    with FakeOpenAIServer(["Paris, ", "of course."]) as llm:
        settings = load_settings(
            environ={
                "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
                "TALKTWIN_RENDER__SIZE": "256",
                "TALKTWIN_LLM__BACKEND": "openai",
                "TALKTWIN_LLM__BASE_URL": llm.base_url,
                "TALKTWIN_LLM__MODEL": "fake",
                "TALKTWIN_TTS__BACKEND": "piper",
                "TALKTWIN_MEMORY__SUMMARIZE": "false",
            }
        )
        components = Components.load(settings)
        try:
            assert isinstance(components.executor, ModelProcessExecutor) and components.pipeline is None
            child = components.executor.info["pid"]
            post = poster(components)

            async def talk() -> LiveClient:
                client = LiveClient()
                try:
                    status, body = await client.connect(post, "frank")
                    assert status == 200, body
                    await client.wait_event("idle", WAIT_S)
                    client.mic.say(question)
                    heard = await client.wait_event("heard", WAIT_S)
                    assert {"capital", "france"} <= words(heard["text"]), heard
                    assert (await client.wait_event("answer", WAIT_S))["text"] == "Paris, of course."
                    await client.wait_for(lambda: len(client.events("idle")) >= 2, WAIT_S)
                    assert len(client.got.video_times) > 0 and max(client.got.audio_rms) > 0.02
                finally:
                    await client.close()
                return client

            asyncio.run(talk())
            assert components.executor.info["pid"] == child and components.executor.starts == 1
            assert not live_threads()  # none of it ran in this process
            turns = components.memory.export(user_key("http", "frank"))["conversations"]["http:frank"]
            assert [t["assistant"] for t in turns["turns"]] == ["Paris, of course."]
        finally:
            components.close()


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (the Makefile installs them)",
)
def test_the_pages_live_button_in_a_real_browser(stack, question, tmp_path: Path):
    """Headless Chromium whose fake microphone plays the spoken question: the page's Live mode
    connects, the question is heard and answered, video and answer audio are received (getStats),
    and hanging up ends the session on the server."""
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from pipeline.media.video_output import write_wav
    from pipeline.types import Audio

    components, pipeline = stack
    mic = tmp_path / "question.wav"  # looped by Chromium: the long silence keeps it to one question
    pcm = np.concatenate([np.zeros(48000, np.int16), question, np.zeros(48000 * 60, np.int16)])
    write_wav(mic, Audio(pcm.astype(np.float32) / 32768, 48000))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(components, HttpOptions(port=port))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    hub = hub_for(pipeline)
    try:
        browser.set_page_load_timeout(30)
        browser.set_script_timeout(30)
        browser.get(f"http://127.0.0.1:{port}/")
        log_items = lambda: [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#log li")]  # noqa: E731
        browser.find_element(By.ID, "live").click()
        heard = _wait(
            lambda: [x for x in log_items() if x.startswith("You:")], "the heard question", log_items
        )
        assert "capital" in heard[0].lower(), heard
        # the answer's sentences, as they are spoken, on one line
        _wait(lambda: "Twin: Paris is the capital of France." in log_items(), "the first sentence", log_items)
        _wait(lambda: f"Twin: {ANSWER}" in log_items(), "the whole answer on its line", log_items)
        stats = _wait(
            lambda: (s := _inbound(browser))["video_frames"] > 25 and s["audio_energy"] > 0 and s,
            "decoded video and answer audio",
            lambda: _inbound(browser),
        )
        assert stats["width"] == 256, stats
        assert not [x for x in log_items() if x.startswith("⚠")], log_items()
        browser.find_element(By.ID, "live").click()  # hang up
        _wait(lambda: not hub.sessions, "the session to end on the server", lambda: hub.sessions)
        assert browser.execute_script("return window.talktwinLive()") is None
        assert browser.find_element(By.ID, "live").text == "🔴 Live"
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(10)
    _wait(lambda: not live_threads(), "the live threads to end", live_threads)
    assert hub.finished[-1]["reason"] in ("hangup", "connection_failed")


def _inbound(browser) -> dict:
    """What the page's peer connection received, from getStats()."""
    return browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const live = window.talktwinLive();
        if (!live) return done({video_frames: 0, audio_energy: 0});
        live.pc.getStats().then((report) => {
          const out = {video_frames: 0, audio_energy: 0, width: 0};
          report.forEach((s) => {
            if (s.type !== "inbound-rtp") return;
            if (s.kind === "video") {
              out.video_frames = s.framesDecoded || 0;
              out.width = s.frameWidth || 0;
            }
            if (s.kind === "audio") out.audio_energy = s.totalAudioEnergy || 0;
          });
          done(out);
        });
        """
    )


def _wait(check, what: str, show, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {show()}")
