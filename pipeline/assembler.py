"""ReplyAssembler: turns answer sentences into the reply's media, one sentence at a time.

Per sentence: speech (TTS), then the sentence is fed to the reply's render session and whatever frames
that makes ready are streamed into the H.264 encoder (all of them for a per-sentence renderer; a
whole-utterance renderer hands its frames over when the session finishes). The audio of all sentences
is joined and muxed at the end. The output format decides how far it goes:
"video" (mp4), "voice" (OGG/Opus, no rendering) or "text" (no speech at all).

Frame size: a video uses the prepared avatar's frame as it is (the square face crop, or the whole
photo with `render.frame = "photo"`), or the square face crop when the caller asks for `square`
frames (a display that cuts a circle from a square, render/variants.py). The subtitle burner is
fitted to whichever frame size results. `max_seconds` is the longest reply: the speech stops at the
last sentence that fits (`truncated`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.cancel import CancelToken
from pipeline.media.audio_input import resample
from pipeline.media.ffmpeg import run_ffmpeg
from pipeline.media.subtitles import SubtitleBurner
from pipeline.media.video_output import VideoWriter, write_wav
from pipeline.render.base import AvatarRenderer, PreparedAvatar
from pipeline.render.variants import frame_size, square_avatar
from pipeline.text import clean_for_speech, detect_language, has_speakable_text
from pipeline.tts.base import SpeechSynthesizer
from pipeline.types import Audio, Speech, StageTimings, VoiceSettings

OUTPUT_SAMPLE_RATE = 24000
SENTENCE_PAUSE_S = 0.12  # breath between sentences
FORMATS = ("video", "voice", "text")


class ReplyAssembler:
    """Collects one reply's sentences into a finished media file (or just text)."""

    def __init__(
        self,
        *,
        fmt: str,
        language: str,
        voice: VoiceSettings,
        synthesizer: SpeechSynthesizer,
        renderer: AvatarRenderer,
        avatar: PreparedAvatar | None,
        out_path: Path,
        fps: int,
        max_seconds: float,
        writer_options: dict,
        subtitles: SubtitleBurner | None,
        timings: StageTimings,
        token: CancelToken | None = None,
        square: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown reply format {fmt!r}")
        if avatar is not None and square:
            avatar = square_avatar(avatar)
        if avatar is not None and subtitles is not None:
            subtitles = subtitles.resized(*frame_size(avatar))
        self.fmt = fmt
        self.language = language
        self.voice = voice
        self.synthesizer = synthesizer
        self.renderer = renderer
        self.avatar = avatar
        self.out_path = out_path
        self.fps = fps
        self.max_seconds = max_seconds
        self.subtitles = subtitles
        self.timings = timings
        self.token = token or CancelToken()
        self.spoken: list[str] = []
        self.engines: set[str] = set()
        self.truncated = False
        self._chunks: list[np.ndarray] = []  # audio at OUTPUT_SAMPLE_RATE
        self._writer = None
        self._session = None
        if fmt == "video":
            assert avatar is not None, "video replies need a prepared avatar"
            width, height = frame_size(avatar)
            self._session = renderer.session(avatar, fps=fps)
            self._writer = VideoWriter(
                out_path, width, fps, height=height, subtitles=subtitles, **writer_options
            )

    @property
    def seconds(self) -> float:
        return sum(len(c) for c in self._chunks) / OUTPUT_SAMPLE_RATE

    def add(self, sentence: str) -> Speech | None:
        """Speak (and render) one sentence; None when it had nothing speakable or did not fit."""
        self.token.check()
        text = clean_for_speech(sentence)
        if self.truncated or not has_speakable_text(text):
            return None
        if self.fmt == "text":
            self.spoken.append(sentence)
            return None
        t0 = time.perf_counter()
        with self.token.stage("tts"):
            speech = self.synthesizer.synthesize(
                text, detect_language(text, default=self.language), self.voice
            )
        self.timings.add("tts", time.perf_counter() - t0)
        self.token.check()
        speech = _with_pause(speech, SENTENCE_PAUSE_S)
        if self.seconds + speech.duration > self.max_seconds and self._chunks:
            self.truncated = True
            return None
        if self._writer is not None:
            self._render(speech)
        self._chunks.append(resample(speech.audio, OUTPUT_SAMPLE_RATE).samples)
        self.spoken.append(sentence)
        self.engines.add(speech.engine)
        return speech

    def _render(self, speech: Speech) -> None:
        assert self._session is not None
        start = self.seconds
        n_frames = round((start + speech.duration) * self.fps) - round(start * self.fps)
        if self.subtitles is not None:
            self.subtitles.add(speech, start)
        self._write_frames(self._session.feed(speech, start_time=start, n_frames=n_frames))

    def _write_frames(self, frames_iter: Iterator[np.ndarray]) -> None:
        """Draw and encode frames, timing each, checking the token between batches."""
        assert self._writer is not None
        t0 = time.perf_counter()
        render_s = 0.0
        while True:
            t1 = time.perf_counter()
            with self.token.stage("render"):
                frames = next(frames_iter, None)
            render_s += time.perf_counter() - t1
            if frames is None:
                break
            self.token.check()
            self._writer.write(frames)
        self.timings.add("render", render_s)
        self.timings.add("encode", time.perf_counter() - t0 - render_s)

    def finish(self) -> Path | None:
        """Write the media file (None for text replies) once every sentence is in."""
        if self.fmt == "text":
            return None
        if self._session is not None:  # frames a whole-utterance renderer still owes
            self._write_frames(self._session.finish())
        t0 = time.perf_counter()
        audio = Audio(np.concatenate(self._chunks), OUTPUT_SAMPLE_RATE)
        if self._writer is not None:
            self._writer.finish(audio)
        else:
            self._write_voice(audio)
        self.timings.add("encode", time.perf_counter() - t0)
        return self.out_path

    def _write_voice(self, audio: Audio) -> None:
        """OGG/Opus, what Telegram plays as a voice message."""
        wav = self.out_path.with_suffix(".tmp.wav")
        try:
            write_wav(wav, audio)
            run_ffmpeg(
                ["-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", str(self.out_path)]
            )
        finally:
            wav.unlink(missing_ok=True)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def _with_pause(speech: Speech, seconds: float) -> Speech:
    pad = np.zeros(int(seconds * speech.audio.sample_rate), np.float32)
    audio = Audio(np.concatenate([speech.audio.samples, pad]), speech.audio.sample_rate)
    return Speech(speech.text, speech.language, audio, speech.words, speech.phonemes, speech.engine)
