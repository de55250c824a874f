"""Voice activity on a live microphone: Silero VAD (the model inside faster-whisper's wheel), streamed.

faster-whisper runs Silero over a whole recording at once; here it runs window by window (512 samples
at 16 kHz, 32 ms), carrying the model's recurrent state and the 64-sample context between windows,
which gives exactly the probabilities of the batch call. `TurnDetector` turns those probabilities
into the user's turns: speech starts after `min_speech_ms` of speech, ends after `end_silence_ms` of
silence, and each finished utterance comes with a little audio from before its start (the onset the
detector needed to be sure). With `pause_silence_ms`, a shorter silence first reports a "pause" with
the utterance so far, and speech after it a "resume": the listener may start answering at the pause
and drop that answer if the user goes on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

RATE = 16000
WINDOW = 512  # samples per Silero window at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees
WINDOW_MS = WINDOW * 1000 / RATE


class SileroStream:
    """Speech probability per 32 ms window of a continuous 16 kHz stream."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session  # onnxruntime sessions are safe to share across threads
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT), np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """The probability that `window` (WINDOW float32 samples) is speech."""
        chunk = window.reshape(1, WINDOW).astype(np.float32, copy=False)
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([self._context, chunk], 1), "h": self._h, "c": self._c}
        )
        self._context = chunk[:, -CONTEXT:]
        return float(np.ravel(out)[0])


@dataclass(frozen=True)
class TurnEvent:
    # "maybe": a first window of speech, not yet enough to start a turn; "nothing": it was not speech
    # (a click, a cough); "start": the user began to speak; "progress": they have gone on speaking for
    # another progress_ms; "pause": they stopped for pause_silence_ms; "resume": they went on after a
    # pause; "end": their utterance is complete
    kind: str
    audio: np.ndarray | None = None  # with "progress", "pause", "end": the utterance so far, 16 kHz float32
    at: float = 0.0  # stream time (s) of the event: when the speech began / when the silence ended it


class TurnDetector:
    """The user's turns in a live stream, from Silero's probabilities (hysteresis, as Silero's own
    get_speech_timestamps: speech above `threshold`, silence below `threshold - 0.15`)."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_speech_ms: float = 128,
        end_silence_ms: float = 500,
        pause_silence_ms: float = 0,
        progress_ms: float = 0,
        preroll_ms: float = 300,
        max_utterance_s: float = 30,
        model: SileroStream | None = None,
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_windows = max(1, round(min_speech_ms / WINDOW_MS))
        self.end_windows = max(1, round(end_silence_ms / WINDOW_MS))
        # 0 (off), or fewer windows than end_windows: a pause must come before the end
        pause = round(pause_silence_ms / WINDOW_MS) if pause_silence_ms > 0 else 0
        self.pause_windows = pause if 0 < pause < self.end_windows else 0
        self.progress_windows = max(1, round(progress_ms / WINDOW_MS)) if progress_ms > 0 else 0
        self.max_windows = max(self.min_windows + 1, round(max_utterance_s * 1000 / WINDOW_MS))
        self.model = model or SileroStream()
        self._pending = np.zeros(0, np.float32)
        self._before: deque[np.ndarray] = deque(maxlen=max(1, round(preroll_ms / WINDOW_MS)))
        self._utterance: list[np.ndarray] = []
        self._voiced = 0  # consecutive speech windows while not yet speaking
        self._silent = 0  # consecutive silent windows while speaking
        self._paused = False  # a "pause" was reported and no speech came since
        self._windows = 0  # windows seen, for stream time
        self._progress_at = 0  # utterance length (windows) at the last "progress"
        self.speaking = False

    @property
    def now(self) -> float:
        """Seconds of audio seen."""
        return self._windows * WINDOW / RATE

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        """Take 16 kHz float32 samples (any length); the turn events they complete."""
        data = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        whole = len(data) // WINDOW * WINDOW
        self._pending = data[whole:]
        events: list[TurnEvent] = []
        for i in range(0, whole, WINDOW):
            event = self._window(data[i : i + WINDOW])
            if event is not None:
                events.append(event)
        return events

    def _window(self, window: np.ndarray) -> TurnEvent | None:
        p = self.model(window)
        self._windows += 1
        if not self.speaking:
            self._before.append(window)
            was_voiced = self._voiced
            self._voiced = self._voiced + 1 if p >= self.threshold else 0
            if self._voiced < self.min_windows:
                if self._voiced == 1 and not was_voiced:
                    return TurnEvent("maybe", at=self.now)
                if was_voiced and not self._voiced:
                    return TurnEvent("nothing", at=self.now)
                return None
            self.speaking, self._silent = True, 0
            self._utterance = list(self._before)
            self._before.clear()
            self._progress_at = 0
            return TurnEvent("start", at=self.now - self._voiced * WINDOW / RATE)
        self._utterance.append(window)
        if p < self.neg_threshold:
            self._silent += 1
        elif p >= self.threshold:
            self._silent = 0
            if self._paused:
                self._paused = False
                return TurnEvent("resume", at=self.now)
        if self._silent < self.end_windows and len(self._utterance) < self.max_windows:
            if self._silent == self.pause_windows and self.pause_windows and not self._paused:
                self._paused = True
                return TurnEvent("pause", audio=np.concatenate(self._utterance), at=self.now)
            grown = len(self._utterance) - self._progress_at
            if self.progress_windows and self._silent == 0 and grown >= self.progress_windows:
                self._progress_at = len(self._utterance)
                return TurnEvent("progress", audio=np.concatenate(self._utterance), at=self.now)
            return None
        return self._finish()

    def _finish(self) -> TurnEvent:
        audio = np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)
        self.speaking, self._voiced, self._silent, self._utterance = False, 0, 0, []
        self._paused = False
        return TurnEvent("end", audio=audio, at=self.now)

    def flush(self) -> TurnEvent | None:
        """End the utterance in progress now (the stream ended); None when the user was silent."""
        return self._finish() if self.speaking else None
