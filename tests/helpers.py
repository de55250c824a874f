"""Test helpers: push inputs through a real pipeline and inspect the mp4 that comes out."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.llm.base import ChatMessage
from pipeline.media.ffmpeg import run_ffmpeg


class ScriptedChat:
    """A stand-in chat model for the hermetic tier: streams a fixed answer word by word.

    It records the messages it was given, so tests can check what the pipeline asked.
    """

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[list[ChatMessage]] = []
        self.max_tokens: list[int] = []  # of each call
        self._lock = threading.Lock()  # calls may come from several threads

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        with self._lock:
            self.calls.append(list(messages))
            self.max_tokens.append(max_tokens)
        cjk = any("\u4e00" <= ch <= "\u9fff" for ch in self.answer)
        pieces = list(self.answer) if cjk else [w + " " for w in self.answer.split(" ")]
        yield from pieces


class NoRecognizer:
    """For text-only tests: fails loudly if the pipeline tries to transcribe."""

    def transcribe(self, audio, language=None, token=None):
        raise AssertionError("ASR must not run for a text message")


@dataclass
class Mp4Info:
    video_codec: str
    audio_codec: str
    width: int
    height: int
    pix_fmt: str
    duration: float  # container duration
    audio_duration: float
    frames: np.ndarray  # (n, h, w, 3) uint8, every decoded frame
    fps: float
    audio: np.ndarray  # mono float32
    sample_rate: int


def probe_mp4(path: Path) -> Mp4Info:
    """Decode an mp4 completely with PyAV (libavformat/libavcodec, what ffprobe uses)."""
    with av.open(str(path)) as box:
        v = box.streams.video[0]
        a = box.streams.audio[0]
        info = (
            v.codec_context.name,
            a.codec_context.name,
            v.codec_context.width,
            v.codec_context.height,
            v.codec_context.pix_fmt,
            box.duration / 1e6,
            float(v.average_rate),
        )
        frames = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)])
    with av.open(str(path)) as box:
        chunks = [f.to_ndarray().mean(axis=0) for f in box.decode(audio=0)]
        rate = box.streams.audio[0].codec_context.sample_rate
    audio = np.concatenate(chunks).astype(np.float32)
    vc, ac, w, h, pix, dur, fps = info
    return Mp4Info(vc, ac, w, h, pix, dur, len(audio) / rate, frames, fps, audio, rate)


def _redetected(frames: np.ndarray, *, video: bool) -> list:
    """FaceMesh landmarks of every rendered frame, found afresh on the pixels (independent of the
    renderer's own control signal)."""
    import mediapipe as mp

    found_all = []
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=not video, max_num_faces=1, refine_landmarks=True
    ) as mesh:
        for i, frame in enumerate(frames):
            found = mesh.process(np.ascontiguousarray(frame))
            assert found.multi_face_landmarks, f"no face in rendered frame {i}"
            found_all.append(found.multi_face_landmarks[0].landmark)
    return found_all


def _ratio(lm, a: int, b: int, c: int, d: int) -> float:
    """Distance a-b over distance c-d, in normalised landmark coordinates."""
    return float(
        np.hypot(lm[a].x - lm[b].x, lm[a].y - lm[b].y) / np.hypot(lm[c].x - lm[d].x, lm[c].y - lm[d].y)
    )


def mouth_openness(frames: np.ndarray) -> np.ndarray:
    """Inner-lip gap / mouth width per frame: tells whether the lips really move with the speech
    (insensitive to head motion)."""
    return np.array([_ratio(lm, 13, 14, 61, 291) for lm in _redetected(frames, video=True)])


def frame_loudness(info: Mp4Info) -> np.ndarray:
    """RMS of the sound track over each video frame's time span."""
    per_frame = info.sample_rate / info.fps
    spans = (info.audio[int(i * per_frame) : int((i + 1) * per_frame)] for i in range(len(info.frames)))
    return np.array([np.sqrt(np.mean(span**2) + 1e-12) for span in spans])


def voiced_and_silent_frames(info: Mp4Info) -> tuple[list[int], list[int]]:
    """Frame indices whose audio is clearly speech, and clearly silence."""
    rms = frame_loudness(info)
    loud = rms.max()
    return [i for i in range(len(rms)) if rms[i] > 0.3 * loud], [
        i for i in range(len(rms)) if rms[i] < 0.01 * loud
    ]


@dataclass
class LipSync:
    correlation: float  # Pearson r between mouth openness and the audio's loudness, per frame
    peak_open: float  # 95th percentile openness over voiced frames
    rest_open: float  # median openness over silent frames


def lip_sync(info: Mp4Info) -> LipSync:
    """How the re-detected mouth opening follows the sound track of a rendered clip."""
    openness = mouth_openness(info.frames)
    loudness = frame_loudness(info)
    voiced, silent = voiced_and_silent_frames(info)
    assert voiced and silent, "expected both speech and pauses in the clip"
    return LipSync(
        correlation=float(np.corrcoef(openness, loudness)[0, 1]),
        peak_open=float(np.percentile(openness[voiced], 95)),
        rest_open=float(np.median(openness[silent])),
    )


def make_tone(path: Path, seconds: float, fmt_args: Sequence[str] = ()) -> Path:
    """A 220 Hz tone with a little noise, encoded by ffmpeg into whatever `path`'s extension says."""
    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"sine=frequency=220:duration={seconds}", *fmt_args, str(path)])
    return path


def eye_openness(frames: np.ndarray) -> np.ndarray:
    """Lid gap / eye width per frame (mean of both eyes): whether a viewer (and a face tracker) sees
    the eyes closed."""
    eyes = ((159, 145, 33, 133), (386, 374, 263, 362))  # upper lid, lower lid, corner, corner
    return np.array([np.mean([_ratio(lm, *eye) for eye in eyes]) for lm in _redetected(frames, video=False)])


def voice_note(synthesizer, text: str, language: str, folder: Path) -> bytes:
    """Speak `text` with an offline voice and encode it as Telegram and Discord send it (OGG/Opus)."""
    from pipeline.media.video_output import write_wav
    from pipeline.types import VoiceSettings

    speech = synthesizer.synthesize(text, language, VoiceSettings())
    wav, ogg = folder / "q.wav", folder / "q.ogg"
    write_wav(wav, speech.audio)
    run_ffmpeg(["-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "32k", str(ogg)])
    return ogg.read_bytes()
