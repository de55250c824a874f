"""The web page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

A real uvicorn server on 127.0.0.1 serves the page and API over the real pipeline (scripted chat
model). The browser types a question, records one with Chromium's fake microphone (MediaRecorder
-> webm/opus upload -> ffmpeg decode), uploads a photo, and plays the answers.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from bots.http.app import HttpOptions, create_app
from bots.jobs import JobRow
from bots.runtime import Components
from pipeline.config import PROJECT_ROOT
from pipeline.types import Audio, Transcript
from tests.test_http import make_components

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (the Makefile installs them)",
)


class HeardRecognizer:
    """Stands in for Whisper: proves the browser's recording arrived and decoded, then 'hears' a question."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def transcribe(self, audio: Audio, language: str | None = None, token=None) -> Transcript:
        self.durations.append(audio.duration)
        return Transcript("What is the capital of France?", "en", audio_duration=audio.duration)


@pytest.fixture
def served(tmp_path: Path, stages) -> Iterator[tuple[str, HeardRecognizer, Components]]:
    components = make_components(tmp_path, stages)
    recognizer = HeardRecognizer()
    components.pipeline.recognizer = recognizer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(components, HttpOptions(port=port)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", recognizer, components
    server.should_exit = True
    thread.join(10)
    components.close()


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_until(condition, timeout: float = 90, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_type_record_and_upload_in_a_real_browser(served, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    url, recognizer, components = served
    browser.get(url)
    assert browser.title == "TalkTwin"
    log_items = lambda: [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#log li")]  # noqa: E731

    # type a question
    browser.find_element(By.ID, "question").send_keys("What is the capital of France?")
    browser.find_element(By.ID, "send").click()
    wait_until(lambda: any(x.startswith("Twin: Paris") for x in log_items()), what="the typed answer")
    duration = wait_until(
        lambda: browser.execute_script(
            "const v = document.getElementById('player');"
            "return v.readyState >= 1 && v.duration > 0 ? v.duration : 0;"
        ),
        what="the video to load in the player",
    )
    assert 0.5 < duration < 10

    # record one with the fake microphone
    record = browser.find_element(By.ID, "record")
    record.click()
    time.sleep(1.5)
    record.click()
    wait_until(lambda: sum(x.startswith("Twin: Paris") for x in log_items()) == 2, what="the spoken answer")
    assert "You: What is the capital of France?" in log_items()
    assert recognizer.durations and recognizer.durations[0] > 0.5  # the browser's webm decoded to audio
    # each question went out with its own Idempotency-Key (safe to retry) and was recorded as done
    with Session(components.jobs.engine) as db:
        keys = db.scalars(select(JobRow.message_id).where(JobRow.status == "done")).all()
    assert len(keys) == 2 and all(k.startswith("web-") for k in keys) and keys[0] != keys[1]

    # upload a photo without a face: the error is shown, in the page's language
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (40, 40, 40)).save(blank)
    browser.find_element(By.ID, "photo").send_keys(str(blank))
    wait_until(lambda: any("could not find a face" in x for x in log_items()), what="the no-face error")
    browser.find_element(By.ID, "photo").send_keys(str(PROJECT_ROOT / "assets" / "grace_hopper.jpg"))
    wait_until(lambda: "Twin: New avatar set." in log_items(), what="the avatar upload")
    browser.save_screenshot(str(tmp_path / "page.png"))
