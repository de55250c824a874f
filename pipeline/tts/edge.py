"""edge-tts: Microsoft Edge's online neural voices (the seed project's voice), with word timings.

The pipeline calls `synthesize` from a worker thread, so the streaming client runs on a private
event loop: `asyncio.run` in this thread, or in a helper thread when this thread already runs a
loop. Network failures are retried a bounded number of times, each attempt under a timeout for the
first audio; whatever still fails becomes `EdgeUnavailable`, which `auto` answers with an offline
voice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from typing import ClassVar, TypeVar

import aiohttp
import edge_tts
from edge_tts.exceptions import EdgeTTSException

from pipeline.errors import EmptyAudio, TalkTwinError, UnreadableAudio
from pipeline.media.audio_input import decode_audio
from pipeline.tts.text import prepare_text
from pipeline.types import Speech, VoiceSettings, WordTiming

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # edge-tts sends 24 kHz mp3
_TICKS = 10_000_000  # WordBoundary offsets and durations are in 100 ns units
T = TypeVar("T")
_RETRYABLE = (OSError, aiohttp.ClientError, TimeoutError, EdgeTTSException)


class EdgeUnavailable(TalkTwinError):
    """The online voice did not answer (offline machine, service down, or it sent no audio)."""

    code: ClassVar[str] = "tts_unavailable"
    messages: ClassVar[dict[str, str]] = {
        "en": "The voice service is not reachable right now. Please try again in a moment.",
        "zh": "语音服务暂时无法连接，请稍后再试。",
    }


def edge_prosody(voice: VoiceSettings) -> tuple[str, str, str]:
    """(rate, volume, pitch) strings exactly as the seed's EdgeTTS.preprocess made them."""
    rate = f"+{voice.rate}%" if voice.rate >= 0 else f"{voice.rate}%"
    pitch = f"+{voice.pitch}Hz" if voice.pitch >= 0 else f"{voice.pitch}Hz"
    volume = f"-{100 - max(0, min(voice.volume, 100))}%"  # 100 -> "-0%", which edge-tts accepts
    return rate, volume, pitch


class EdgeSynthesizer:
    """Speaks through edge-tts; `voices` maps a language to a voice ShortName."""

    name = "edge"

    def __init__(
        self,
        voices: dict[str, str],
        timeout_s: float = 4.0,
        retries: int = 0,
        total_timeout_s: float = 60.0,
        backoff_s: float = 0.5,
    ) -> None:
        """`timeout_s` bounds the wait for the first audio of an attempt, `total_timeout_s` an attempt."""
        self.voices = dict(voices)
        self.timeout_s = timeout_s
        self.retries = retries
        self.total_timeout_s = total_timeout_s
        self.backoff_s = backoff_s

    def supports(self, language: str) -> bool:
        return language in self.voices

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        text = prepare_text(text)
        name = voice.voice or self.voices.get(language) or self.voices.get("en", "")
        if not name:
            raise EdgeUnavailable(f"no edge voice for language {language!r}")
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                mp3, words = _run(self._stream(text, name, voice))
                break
            except _RETRYABLE as e:
                log.debug("edge-tts attempt %d/%d failed: %r", attempt + 1, self.retries + 1, e)
                last = e
        else:
            raise EdgeUnavailable(f"edge-tts failed: {last!r}") from last
        try:
            audio = decode_audio(mp3, sample_rate=SAMPLE_RATE)
        except (UnreadableAudio, EmptyAudio) as e:  # the service's fault, not the user's
            raise EdgeUnavailable(f"edge-tts sent unusable audio: {e}") from e
        words = tuple(
            WordTiming(w.text, min(w.start, audio.duration), min(w.end, audio.duration)) for w in words
        )
        return Speech(text, language, audio, words=words, engine=self.name)

    async def _stream(self, text: str, name: str, voice: VoiceSettings) -> tuple[bytes, list[WordTiming]]:
        """The mp3 bytes and word timings of one attempt."""
        rate, volume, pitch = edge_prosody(voice)
        communicate = edge_tts.Communicate(
            text,
            name,
            rate=rate,
            volume=volume,
            pitch=pitch,
            boundary="WordBoundary",
            connect_timeout=max(1, round(self.timeout_s)),
            receive_timeout=max(1, round(self.timeout_s)),
        )
        audio: list[bytes] = []
        words: list[WordTiming] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        stream = communicate.stream()
        try:
            async with asyncio.timeout(self.timeout_s) as limit:
                async for chunk in stream:
                    if chunk["type"] == "audio":
                        if not audio:  # first audio: the service answers, allow the whole reply
                            limit.reschedule(deadline)
                        audio.append(chunk["data"])
                    elif chunk["type"] == "WordBoundary":
                        start = chunk["offset"] / _TICKS
                        words.append(WordTiming(chunk["text"], start, start + chunk["duration"] / _TICKS))
        finally:
            await stream.aclose()
        return b"".join(audio), words


def _run(coro: Coroutine[object, object, T]) -> T:
    """Run `coro` to completion from synchronous code, whether or not this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, T | BaseException] = {}

    def worker() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=worker, name="edge-tts", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
