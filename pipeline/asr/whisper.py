"""Speech recognition with faster-whisper (CTranslate2)."""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cancel import CancelToken
from pipeline.errors import EmptyTranscript, ModelMissing
from pipeline.media.audio_input import resample
from pipeline.types import Audio, Transcript, WordTiming

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
WINDOW_S = 30  # what Whisper's encoder reads at once
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's fallback ladder
# Padding kept after the speech, and the shortest window: on 40 bench questions (Piper, the Mandarin
# voice) 4 s / 10 s differed from the full window in 3 transcripts (2 of them better), 2 s / 5 s in 5.
FIT_MARGIN_FRAMES = 400
FIT_MIN_FRAMES = 1000


class WhisperRecognizer:
    """Whisper through faster-whisper: CUDA float16 when a GPU is there, CPU int8 otherwise.

    `model` is a local CTranslate2 model folder (the default is assembled into checkpoints/ from
    registry packages) or, online only, a faster-whisper model name. The model is loaded once and
    shared; CTranslate2 models are safe to call from several threads, but on a small CPU running two
    transcriptions at once only makes both slower, so calls are serialised.

    With `fit_window`, the encoder reads the recording plus 4 s (10 s at least) instead of a window
    padded to 30 s: a spoken question is recognised ~3.5x faster (on 2 cores ~0.2 s instead of 0.7 s),
    with the same words in nearly every case. A doubtful result (low confidence, repetition) is
    decoded again the usual way.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        beam_size: int = 1,
        vad: bool = True,
        threads: int = 0,
        fit_window: bool = True,
        doubtful_logprob: float = -1.0,
    ) -> None:
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        looks_like_path = os.sep in model or model.startswith(".")
        if looks_like_path and not (Path(model) / "model.bin").is_file():
            raise ModelMissing(f"Whisper model not found at {model}", name=model)
        self.model = _one_pass_model()(
            model, device=device, compute_type=compute_type, cpu_threads=threads or (os.cpu_count() or 1)
        )
        self.beam_size = beam_size
        self.vad = vad
        self.fit_window = fit_window
        self.doubtful_logprob = doubtful_logprob
        self._lock = threading.Lock()
        log.info("whisper %s on %s (%s)", model, device, compute_type)

    def transcribe(
        self, audio: Audio, language: str | None = None, token: CancelToken | None = None
    ) -> Transcript:
        samples = resample(audio, WHISPER_RATE).samples
        token = token or CancelToken()
        # only a recording within one window gains much (a longer one: its last window), and a doubtful
        # segment anywhere would make a long one decoded twice
        fit = self.fit_window and len(samples) <= WINDOW_S * WHISPER_RATE
        with self._lock:
            segments, info = self._decode(samples, language, token, fit=fit)
            if fit and any(self._doubtful(s) for s in segments):
                log.info("whisper: a doubtful result on the fitted window; decoding the full window")
                segments, info = self._decode(samples, language, token, fit=False)
        # Whisper sometimes writes Mandarin in traditional characters; users expect simplified. A
        # character split across byte tokens it never finished comes out as U+FFFD: dropped.
        simplify = _to_simplified if info.language == "zh" else str.strip

        def norm(text: str) -> str:
            return simplify(text.replace("\ufffd", ""))

        words = tuple(
            WordTiming(norm(w.word), w.start, w.end)
            for s in segments
            for w in (s.words or ())
            if w.word.strip()
        )
        joiner = "" if info.language in ("zh", "ja") else " "
        text = joiner.join(norm(s.text) for s in segments).strip()
        if not any(ch.isalnum() for ch in text):
            raise EmptyTranscript("no words recognised")
        return Transcript(text=text, language=info.language, words=words, audio_duration=audio.duration)

    def _decode(
        self, samples: np.ndarray, language: str | None, token: CancelToken, *, fit: bool
    ) -> tuple[list[Any], Any]:
        self.model.fit_frames = fit
        try:
            pending, info = self.model.transcribe(
                samples,
                language=language,
                beam_size=self.beam_size,
                vad_filter=self.vad,
                word_timestamps=True,
                condition_on_previous_text=False,
                # a fitted window gets one greedy try; its doubtful results are redone in full
                temperature=0.0 if fit else DEFAULT_TEMPERATURES,
            )
            segments = []
            for segment in pending:  # decoded lazily, ~30 s of audio at a time
                token.check()
                segments.append(segment)
            return segments, info
        finally:
            self.model.fit_frames = False

    def _doubtful(self, segment: Any) -> bool:
        return segment.avg_logprob < self.doubtful_logprob or segment.compression_ratio > 2.4


@functools.cache
def _one_pass_model() -> type:
    """faster-whisper's WhisperModel, encoding a short recording once instead of twice.

    Without a language, faster-whisper encodes the first 30 s window to detect the language, then
    encodes the same window again to transcribe it. For a short question the encoder is most of the
    work (on 2 cores: 1.4 s with detection, 0.9 s without), so here detection encodes the window
    exactly as transcription will (faster-whisper 1.2's `generate_segments`: the content frames,
    padded to 30 s) and hands its output on. Recordings longer than one window go the usual way.
    """
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    class OnePassWhisper(WhisperModel):
        _encoded = threading.local()
        fit_frames = False

        def encode(self, features):  # type: ignore[no-untyped-def]
            """With `fit_frames`, only the content and a margin of the padded window are encoded."""
            if self.fit_frames:
                voiced = np.flatnonzero(np.any(features != 0, axis=-2))
                content = int(voiced[-1]) + 1 if len(voiced) else 0
                keep = min(features.shape[-1], max(FIT_MIN_FRAMES, content + FIT_MARGIN_FRAMES))
                features = features[..., :keep]
            return super().encode(features)

        def detect_language(self, audio=None, features=None, **kwargs):  # type: ignore[no-untyped-def]
            window = self.feature_extractor.nb_max_frames
            if audio is not None or features is None or features.shape[-1] - 1 > window:
                return super().detect_language(audio, features, **kwargs)
            encoded = self.encode(pad_or_trim(features[:, : features.shape[-1] - 1]))
            ranked = [(token[2:-2], p) for token, p in self.model.detect_language(encoded)[0]]
            self._encoded.first_window = encoded
            return ranked[0][0], ranked[0][1], ranked

        def generate_segments(self, features, tokenizer, options, log_progress, encoder_output=None):  # type: ignore[no-untyped-def]
            encoded, self._encoded.first_window = getattr(self._encoded, "first_window", None), None
            return super().generate_segments(
                features, tokenizer, options, log_progress, encoder_output or encoded
            )

    return OnePassWhisper


def _to_simplified(text: str) -> str:
    import zhconv

    return zhconv.convert(text.strip(), "zh-cn")


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:
        return False
