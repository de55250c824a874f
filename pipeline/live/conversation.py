"""LiveConversation: a spoken, interruptible conversation with the talking avatar, independent of WebRTC.

    mic PCM ─▶ listener ─(Silero VAD: start / end of the user's turn)─┐
                                                                      ▼
                     thinker: Whisper ─▶ chat model (streams sentences) ─▶ TTS, per sentence
                                                                      ▼
                     speaker: render session ─▶ frames + their audio ─▶ read(), one per 1/fps

Three threads per conversation. The speaker draws every frame of the session on one timeline: the
answer's sentences as they come, idle frames (blinks, head sway, a closed mouth: a silent "sentence"
fed to the same render session) whenever there is nothing to say. Blinks and sway are functions of
the frame's time, so an idle frame and a speaking frame at the same index differ only in the mouth:
idle frames are drawn only a few frames ahead, and the moment an answer's first sentence is spoken
the idle frames not yet shown are dropped and its frames take their place at the same index. Each
frame carries exactly its 1/fps of audio, so sound and picture leave in step; the caller paces them.

Barge-in: the first 32 ms window of speech while the twin talks holds it (no new frame or sound
goes out: the caller repeats the last frame with silence), so it falls silent at once; if the user
goes on speaking for `min_speech_ms` that is a barge-in, else (a click, a cough) it carries on where
it was. A barge-in cancels the answer (its cancel token stops the
model, TTS and the drawing between batches), the frames not yet shown are dropped, and the turn is
recorded in memory with the part that was shown, marked as cut off. Speech while the twin is still
thinking (nothing shown yet) is taken as the same turn going on: the answer in work is dropped and
the new utterance is heard together with the earlier one.

Answering at a pause: an answer is started once the user has been silent for `think_after_ms`, before
their turn is over (`end_silence_ms`), and held before its first sentence is shown until the turn
ends; if the user goes on speaking it is dropped. Whisper and the model so use the end-of-turn wait.

Reading ahead (off by default: on 2 cores it pays only for long questions, docs/live.md): every
`read_ahead_ms` of the user's speech, the thinker, when it has nothing else to do, runs Whisper on
what they said so far and has the model read the prompt those words begin, so that once the turn
ends the model reads only the question's last words (llama.cpp keeps the common beginning of its
prompts cached).

Memory and knowledge are the pipeline's own (`pipeline.context`): the conversation is the user's
thread, as in the bots, with their avatar and voice when the context keeps profiles (MemoryStore).
The thinker keeps the chat model's prompt read ahead and writes memory's summaries in the user's
quiet moments (pipeline/live/warm_prompt.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.cancel import Cancelled, CancelToken
from pipeline.errors import EmptyTranscript, InternalFailure, TalkTwinError
from pipeline.live.options import LiveOptions, live_chat_model
from pipeline.live.vad import RATE as MIC_RATE
from pipeline.live.vad import TurnDetector
from pipeline.live.warm_prompt import WarmPrompt
from pipeline.media.audio_input import resample
from pipeline.orchestrator import NO_ANSWER, AnswerEnding, ReplyPipeline
from pipeline.render.base import PreparedAvatar
from pipeline.render.variants import frame_size, square_avatar
from pipeline.text import clean_for_speech, detect_language, has_speakable_text, is_phrase
from pipeline.tts.factory import default_voice
from pipeline.types import Audio, Speech, StageTimings, VoiceSettings

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
# Appended to an answer the user interrupted, in the turn memory keeps (the model reads it next time).
CUT_OFF = {"en": " … [cut off: the user interrupted]", "zh": "……【被用户打断】"}
SENTENCE_PAUSE_S = 0.12  # breath after each sentence, as in recorded replies


@dataclass(frozen=True)
class LiveFrame:
    """One frame to show and the audio that plays with it."""

    index: int  # on the conversation's timeline (index / fps seconds from its start)
    image: np.ndarray  # (height, width, 3) uint8 RGB
    audio: np.ndarray  # int16 mono, samples_per_frame samples
    answer: int = 0  # the answer it belongs to; 0 = an idle frame
    sentence: str | None = None  # set on the first frame of each spoken sentence
    ending: int = 0  # the answer that is complete once this frame is shown


@dataclass
class _Answer:
    id: int
    audio: np.ndarray  # the user's utterance, 16 kHz
    heard_at: float  # monotonic time the end of the user's speech was detected
    token: CancelToken = field(default_factory=CancelToken)
    turn_ended: threading.Event = field(default_factory=threading.Event)  # clear: started at a pause
    announced: bool = False  # the "heard" event was sent
    question: str = ""
    language: str = "en"
    written: list[str] = field(default_factory=list)  # sentences spoken (TTS done)
    shown: list[str] = field(default_factory=list)  # sentences whose first frame was shown
    speaking: bool = False
    finished: bool = False  # shown to the end, interrupted or failed
    timings: StageTimings = field(default_factory=StageTimings)


def _join(thread: threading.Thread, timeout: float) -> None:
    thread.join(timeout)
    if thread.is_alive():
        log.warning("live thread %s still busy after %.0f s", thread.name, timeout)


class LiveConversation:
    """One user's live conversation over a pipeline (models in this process)."""

    def __init__(
        self,
        pipeline: ReplyPipeline,
        *,
        user: str,
        conversation: str = "",
        avatar: bytes | None = None,
        voice: VoiceSettings | None = None,
        options: LiveOptions | None = None,
        on_event: EventSink | None = None,
        lang: str = "en",
    ) -> None:
        self.pipeline = pipeline
        self.user = user
        self.thread = conversation or user
        self.options = options or LiveOptions.from_settings(pipeline.settings)
        self.on_event = on_event or (lambda event: None)
        self.lang = lang  # the page's, until the user's own is heard
        self.persona_lang = lang  # the system prompt's, whatever the user speaks: it stays read (warm)
        # None: the user's own (their profile), else the configured default
        self.voice: VoiceSettings | None = voice
        self._avatar_bytes = avatar  # None: the user's own photo, else the default avatar
        self.avatar: PreparedAvatar | None = None
        self.last_heard = time.monotonic()  # when the user last spoke (for an idle timeout)
        self._ids = itertools.count(1)
        self._mic: queue.Queue[np.ndarray | None] = queue.Queue()
        self._tasks: queue.Queue[tuple[str, _Answer | None] | None] = queue.Queue()
        self._inbox: queue.Queue[tuple[_Answer, str | None, Speech | None]] = queue.Queue()
        self._frames: deque[LiveFrame] = deque()
        self._cond = threading.Condition()
        self._next_index = 0
        self._pending_end = 0  # answer whose end marker goes on the next frame pushed
        self._answers: dict[int, _Answer] = {}
        self._current: _Answer | None = None  # the answer being heard, written or spoken
        self._carry: np.ndarray | None = None  # audio of a turn the user went on speaking in
        self._said_so_far: np.ndarray | None = None  # the utterance in progress, to read ahead
        self._reading: threading.Thread | None = None  # the model reading it
        self._closing = threading.Event()
        self._holding = False  # the user may be starting to speak: nothing is shown meanwhile
        self._active_at = time.monotonic()  # the user's voice or the twin's answer, last
        self._warm: WarmPrompt | None = None  # the chat model's prompt, read ahead (start())
        self._threads: list[threading.Thread] = []
        self.counts = {"answers": 0, "interrupted": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Prepare the avatar (raises NoFaceFound and friends), then start listening and drawing."""
        renderer, context = self.pipeline.renderer, self.pipeline.context
        if not renderer.capabilities.streaming:
            raise InternalFailure(f"the {renderer.name} renderer cannot draw live (frames only at the end)")
        profile = getattr(context, "profile", None)  # a MemoryStore keeps profiles and avatars
        if self.voice is None and profile is not None:
            self.voice = profile(self.user).chosen_voice
        self.voice = self.voice or default_voice(self.pipeline.settings)
        if self._avatar_bytes is None and hasattr(context, "avatar"):
            self._avatar_bytes = context.avatar(self.user)
        image = self._avatar_bytes or self.pipeline._default_avatar_bytes
        self.avatar = square_avatar(renderer.prepare(image, self.options.size))
        self.chat_model = live_chat_model(self.pipeline)
        self._warm = WarmPrompt(self.pipeline, self.chat_model, thread=self.thread, user=self.user)
        self._session = renderer.session(self.avatar, fps=self.options.fps)
        resample(Audio(np.zeros(441, np.float32), 22050), self.options.sample_rate)  # imports scipy (~1 s)
        self._detector = TurnDetector(
            threshold=self.options.vad_threshold,
            min_speech_ms=self.options.min_speech_ms,
            end_silence_ms=self.options.end_silence_ms,
            pause_silence_ms=self.options.think_after_ms,
            progress_ms=self.options.read_ahead_ms,
            max_utterance_s=self.options.max_utterance_s,
        )
        self._tasks.put(("prime", None))
        self._warm.hold_summaries()
        for name, target in (("listen", self._listen), ("think", self._think), ("speak", self._speak)):
            thread = threading.Thread(target=target, name=f"live-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._emit({"type": "idle"})

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        assert self.avatar is not None, "start() first"
        return frame_size(self.avatar)

    def close(self, timeout: float = 20.0) -> None:
        """Stop everything; an answer being spoken is recorded as cut off. Blocking; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        interrupted = self._interrupt()
        self._mic.put(None)
        self._tasks.put(None)
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            _join(thread, timeout)
        if self._reading is not None:  # started by the thinker, which has stopped by now
            _join(self._reading, timeout)
        if interrupted is not None:
            self._record(interrupted, cut=True)
        if self._warm is not None:
            self._warm.release_summaries()  # a summary still due is written now

    @property
    def busy(self) -> bool:
        """An answer is being heard, written or spoken."""
        return self._current is not None

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # ------------------------------------------------------------------ input and output
    def hear(self, samples: np.ndarray) -> None:
        """Microphone audio: 16 kHz mono float32, any length. Cheap: the listener thread does the work."""
        if not self._closing.is_set():
            self._mic.put(np.asarray(samples, np.float32))

    def read(self) -> LiveFrame | None:
        """The next frame and its audio, or None when none is drawn yet (the caller repeats the last
        frame with silence). Call once per 1/fps; cheap and non-blocking."""
        events: list[dict[str, Any]] = []
        with self._cond:
            if self._holding:
                return None
            frame = self._frames.popleft() if self._frames else None
            self._cond.notify_all()
            if frame is None:
                return None
            answer = self._answers.get(frame.answer) if frame.answer else None
            if answer is not None and not answer.finished:
                if not answer.speaking:
                    answer.speaking = True
                    latency = time.monotonic() - answer.heard_at
                    answer.timings.add("first_frame", latency)
                    events.append(
                        {
                            "type": "speaking",
                            "latency_s": round(latency, 3),
                            "timings": answer.timings.as_dict(),
                        }
                    )
                if frame.sentence is not None:
                    answer.shown.append(frame.sentence)
                    events.append({"type": "answer", "text": frame.sentence})
            ended = self._answers.get(frame.ending) if frame.ending else None
            if ended is not None and not ended.finished:
                ended.finished = True
                self._active_at = time.monotonic()
                if self._current is ended:
                    self._current = None
                self._tasks.put(("record", ended))
                events.append({"type": "idle"})
        for event in events:
            self._emit(event)
        return frame

    @property
    def holding(self) -> bool:
        """The twin is held while the user may be starting to speak (read() gives None meanwhile)."""
        return self._holding

    def silence(self) -> np.ndarray:
        """One frame's worth of silence (what plays with a repeated frame)."""
        return np.zeros(self.options.samples_per_frame, np.int16)

    # ------------------------------------------------------------------ listener
    def _listen(self) -> None:
        while True:
            samples = self._mic.get()
            if samples is None or self._closing.is_set():
                return
            try:
                events = self._detector.feed(samples)
            except Exception:
                log.exception("voice activity detection failed")
                self._error(InternalFailure("voice activity detection failed"))
                continue
            if events or self._detector.speaking:
                self._active_at = time.monotonic()
            for event in events:
                if event.kind in ("maybe", "nothing"):
                    with self._cond:  # hold the twin only while it is speaking
                        answer = self._current
                        self._holding = event.kind == "maybe" and answer is not None and answer.speaking
                    continue
                if event.kind == "start":
                    self.last_heard = time.monotonic()
                    interrupted = self._interrupt()
                    self._holding = False
                    if interrupted is not None:
                        self.counts["interrupted"] += 1
                        self._tasks.put(("record_cut", interrupted))
                        self._emit({"type": "idle", "interrupted": True})
                    self._emit({"type": "listening"})
                elif event.kind == "progress":
                    self._read_ahead_later(event.audio)
                elif event.kind == "pause":
                    self._heard(event.audio, turn_ended=False)
                elif event.kind == "resume":
                    self.last_heard = time.monotonic()
                    self._resumed()
                else:
                    self.last_heard = time.monotonic()
                    self._turn_ended(event.audio)

    def _interrupt(self) -> _Answer | None:
        """Stop the answer in work, if any. Returns it when some of it was shown (record it as cut
        off); when nothing was shown yet, the user is still in the same turn: keep what they said."""
        with self._cond:
            answer = self._current
            if answer is None or answer.finished:
                return None
            answer.finished = True
            answer.token.cancel()
            self._current = None
            if self._frames:  # nothing queued is shown any more: draw on from the first of them
                self._next_index = self._frames[0].index
                self._frames.clear()
            self._cond.notify_all()
            if not answer.speaking:
                self._carry = answer.audio
                self._answers.pop(answer.id, None)
                return None
            return answer

    def _heard(self, audio: np.ndarray | None, *, turn_ended: bool = True) -> None:
        if audio is None or not len(audio):
            return
        with self._cond:
            if self._carry is not None:
                audio = np.concatenate([self._carry, audio])
                if turn_ended:
                    self._carry = None
            answer = _Answer(next(self._ids), audio, time.monotonic())
            answer.timings.add("vad_hangover", self.options.end_silence_ms / 1000)
            answer.token.limit(self.options.answer_timeout_s)
            if turn_ended:
                answer.turn_ended.set()
            self._answers[answer.id] = answer
            self._current = answer
        self._tasks.put(("answer", answer))

    def _resumed(self) -> None:
        """The user went on after a pause: the answer started there is not wanted (nothing of it was
        shown: it waits for the end of the turn)."""
        with self._cond:
            answer = self._current
            if answer is None or answer.turn_ended.is_set():
                return
            answer.finished = True
            answer.token.cancel()
            self._answers.pop(answer.id, None)
            self._current = None

    def _read_ahead_later(self, audio: np.ndarray | None) -> None:
        """The user is still speaking: have the thinker read their words so far, if it is free."""
        with self._cond:
            if audio is None or self._current is not None or not self._tasks.empty():
                return
            if self._carry is not None:
                audio = np.concatenate([self._carry, audio])
            self._said_so_far = audio
        self._tasks.put(("read_ahead", None))

    def _turn_ended(self, audio: np.ndarray | None) -> None:
        """The user's turn is over: show the answer started at its last pause, or start one now."""
        with self._cond:
            answer = self._current
            early = answer is not None and not answer.turn_ended.is_set()
            if early:
                assert answer is not None
                answer.timings.add("started_before_end", time.monotonic() - answer.heard_at)
                answer.heard_at = time.monotonic()
                answer.turn_ended.set()
                self._carry = None
        if early:
            assert answer is not None
            self._announce(answer)
        else:
            self._heard(audio)

    def _announce(self, answer: _Answer) -> None:
        """Send the "heard" event once the turn has ended and the words are known."""
        with self._cond:
            if answer.announced or not answer.question or not answer.turn_ended.is_set() or answer.finished:
                return
            answer.announced = True
        self._emit({"type": "heard", "text": answer.question, "language": answer.language})

    # ------------------------------------------------------------------ thinker
    def _think(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=0.5)
            except queue.Empty:
                self._summarize_if_quiet()
                continue
            if task is None:
                return
            kind, answer = task
            try:
                if kind == "prime":
                    self._prime()
                elif kind == "read_ahead":
                    self._read_ahead()
                elif kind == "answer" and answer is not None:
                    self._answer(answer)
                elif answer is not None:
                    self._record(answer, cut=kind == "record_cut")
                    self._prime()  # the next prompt ends with this turn: read it now, not then
            except Exception:
                log.exception("live %s failed", kind)

    def _question_waiting(self) -> bool:
        return not self._tasks.empty() or self._closing.is_set()

    def _prime(self) -> None:
        assert self._warm is not None
        if not self._question_waiting():  # a question goes first, also once priming has begun
            self._warm.prime(self.persona_lang, self._question_waiting)

    def _read_ahead(self) -> None:
        """Whisper on the user's words so far, then the model reads the prompt they begin, in a
        thread of its own: the thinker is free at once for the answer, whose Whisper call then
        overlaps the model's last step in reading (a step cannot be stopped midway)."""
        assert self._warm is not None
        warm = self._warm
        with self._cond:
            audio, self._said_so_far = self._said_so_far, None
        reading = self._reading
        if audio is None or self._question_waiting() or (reading is not None and reading.is_alive()):
            return
        started = time.perf_counter()
        try:
            transcript = self.pipeline.recognizer.transcribe(Audio(audio, MIC_RATE))
        except EmptyTranscript:
            return
        except Exception:
            log.exception("live: could not recognise the words so far")
            return
        took = time.perf_counter() - started
        log.info("live: heard %d characters so far in %.2f s", len(transcript.text), took)
        if self._question_waiting():
            return
        language = "zh" if transcript.language.startswith(("zh", "yue")) else transcript.language

        def answering() -> bool:  # the turn paused or ended: that answer's prompt comes next
            return self._current is not None or self._closing.is_set()

        self._reading = threading.Thread(
            target=warm.read_ahead,
            args=(transcript.text, language, self.persona_lang, answering),
            name="live-read-ahead",
            daemon=True,
        )
        self._reading.start()

    def _summarize_if_quiet(self) -> None:
        """Memory's summary, once the user has been quiet for `summary_after_quiet_s` (no voice, no
        answer); given up as soon as they speak or a task comes."""
        assert self._warm is not None
        if self._closing.is_set() or self.busy:
            return
        if time.monotonic() - self._active_at < self.options.summary_after_quiet_s:
            return
        started = time.monotonic()

        def stop() -> bool:
            return self._active_at > started or not self._tasks.empty() or self._closing.is_set()

        self._warm.summarize(stop, self.persona_lang)

    def _answer(self, answer: _Answer) -> None:
        pipeline, token = self.pipeline, answer.token
        try:
            if token.cancelled or self._closing.is_set():
                self._drop(answer)
                return
            t0 = time.perf_counter()
            with token.stage("asr"):
                transcript = pipeline.recognizer.transcribe(Audio(answer.audio, MIC_RATE), token=token)
            answer.timings.add("asr", time.perf_counter() - t0)
            token.check()
            answer.language = "zh" if transcript.language.startswith(("zh", "yue")) else transcript.language
            answer.question = transcript.text
            if answer.language in ("en", "zh"):
                self.lang = answer.language  # for error messages
            self._announce(answer)
            t0 = time.perf_counter()
            context = pipeline.context.context_for(self.thread, self.user, answer.question)
            messages = pipeline._messages(answer.question, answer.language, context, self.persona_lang)
            answer.timings.add("context", time.perf_counter() - t0)
            t0 = time.perf_counter()
            sentences = pipeline._answer_sentences(
                messages,
                answer.timings,
                token,
                AnswerEnding(),
                self.chat_model,
                first_clause_chars=self.options.first_clause_chars,
                first_phrase_words=self.options.first_phrase_words,
            )
            try:
                for sentence in sentences:
                    if not answer.written:
                        answer.timings.add("first_sentence", time.perf_counter() - t0)
                    self._say(answer, sentence)
            finally:
                sentences.close()  # stops the model mid-answer when the user interrupted
            if not answer.written:
                self._say(answer, NO_ANSWER[answer.language == "zh"])
            self.counts["answers"] += 1
            self._to_speaker(answer, None, None)  # the end of the answer
        except Cancelled:
            log.info("live answer %d interrupted", answer.id)
        except EmptyTranscript:
            self._drop(answer)  # a cough, a click: nothing to answer
        except TalkTwinError as e:
            if not token.cancelled:
                log.warning("live answer %d failed: %s", answer.id, e)
                self._error(e)
            self._drop(answer)
        except Exception as e:
            log.exception("live answer %d failed", answer.id)
            self._error(InternalFailure(repr(e)))
            self._drop(answer)

    def _say(self, answer: _Answer, sentence: str) -> None:
        """Speak one sentence and hand it to the speaker."""
        answer.token.check()
        text = clean_for_speech(sentence)
        if not has_speakable_text(text):
            return
        if is_phrase(text):  # "The sky is blue" | "because …": said as a phrase that goes on
            text += ","
        t0 = time.perf_counter()
        language = detect_language(text, default=answer.language)
        synthesizer = self.pipeline.synthesizer
        offline_for = getattr(synthesizer, "offline_for", None)  # AutoSynthesizer's local voices
        if self.options.offline_voice and offline_for is not None:
            synthesizer = offline_for(language)
        with answer.token.stage("tts"):
            speech = synthesizer.synthesize(text, language, self.voice)
        answer.timings.add("tts" if answer.written else "tts_first", time.perf_counter() - t0)
        answer.token.check()
        while not answer.turn_ended.wait(0.02):  # started at a pause: shown only once the turn is over
            answer.token.check()
            if self._closing.is_set():
                raise Cancelled("the conversation closed")
        if not answer.written:  # when the speaker got it, from the end of the turn
            answer.timings.add("to_speaker_at", time.monotonic() - answer.heard_at)
        answer.written.append(sentence)
        self._to_speaker(answer, sentence, speech)

    def _to_speaker(self, answer: _Answer, sentence: str | None, speech: Speech | None) -> None:
        self._inbox.put((answer, sentence, speech))
        with self._cond:
            self._cond.notify_all()  # the speaker may be waiting to draw idle frames

    def _drop(self, answer: _Answer) -> None:
        """An answer that will not be spoken: back to idle."""
        with self._cond:
            self._answers.pop(answer.id, None)
            if answer.finished:
                return
            answer.finished = True
            if self._current is answer:
                self._current = None
        if answer.turn_ended.is_set():  # one started at a pause is heard again at the end of the turn
            self._emit({"type": "idle"})

    def _record(self, answer: _Answer, *, cut: bool) -> None:
        """Keep the turn in the user's memory: the whole answer, or what was shown, marked as cut off."""
        self._answers.pop(answer.id, None)
        if not answer.question:
            return
        sentences = answer.shown if cut else answer.written
        joiner = "" if answer.language == "zh" else " "
        text = joiner.join(sentences).strip()
        if cut:
            text += CUT_OFF["zh" if answer.language == "zh" else "en"]
        try:
            self.pipeline.context.record_turn(self.thread, self.user, answer.question, text.strip())
        except Exception:
            log.exception("could not record the live turn")

    # ------------------------------------------------------------------ speaker
    def _speak(self) -> None:
        opts = self.options
        silent = np.zeros(MIC_RATE // opts.fps * opts.idle_ahead, np.float32)
        idle_audio = Speech("", "en", Audio(silent, MIC_RATE))
        while not self._closing.is_set():
            try:
                answer, sentence, speech = self._inbox.get_nowait()
            except queue.Empty:
                self._idle(idle_audio)
                continue
            if answer.finished:
                continue
            if sentence is None or speech is None:
                with self._cond:
                    self._pending_end = answer.id
                continue
            try:
                self._draw_sentence(answer, sentence, speech)
            except Exception as e:
                log.exception("live drawing failed")
                self._error(InternalFailure(repr(e)))
                self._interrupt()

    def _idle(self, idle_audio: Speech) -> None:
        """Draw a few idle frames, once the frames ahead run short."""
        opts = self.options
        with self._cond:
            while len(self._frames) >= opts.idle_ahead and not self._closing.is_set():
                self._cond.wait(0.1)
                if not self._inbox.empty():
                    return
            start = self._next_index
        n = opts.idle_ahead
        frames = [
            f
            for batch in self._session.feed(idle_audio, start_time=start / opts.fps, n_frames=n)
            for f in batch
        ]
        silent = np.zeros(opts.samples_per_frame, np.int16)
        self._push([LiveFrame(start + i, frame, silent) for i, frame in enumerate(frames)], start, None)

    def _draw_sentence(self, answer: _Answer, sentence: str, speech: Speech) -> None:
        opts = self.options
        t0 = time.perf_counter()
        breath = 0.0 if is_phrase(sentence) else SENTENCE_PAUSE_S  # the voice's comma pauses already
        pause = np.zeros(int(breath * speech.audio.sample_rate), np.float32)
        speech = Speech(
            speech.text,
            speech.language,
            Audio(np.concatenate([speech.audio.samples, pause]), speech.audio.sample_rate),
            speech.words,
            speech.phonemes,
            speech.engine,
        )
        n_frames = max(1, math.ceil(speech.duration * opts.fps))
        spf = opts.samples_per_frame
        pcm = resample(speech.audio, opts.sample_rate).samples
        pcm = np.pad(pcm, (0, max(0, n_frames * spf - len(pcm))))[: n_frames * spf]
        pcm = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        with self._cond:
            while self._frames and self._frames[-1].answer == 0:  # idle frames not shown yet
                dropped = self._frames.pop()
                self._next_index = dropped.index
                self._pending_end = self._pending_end or dropped.ending
            start = self._next_index
        first = True
        done = 0
        for batch in self._session.feed(speech, start_time=start / opts.fps, n_frames=n_frames):
            if answer.finished or self._closing.is_set():
                return
            frames = []
            for image in batch:
                k = done + len(frames)
                frames.append(
                    LiveFrame(
                        start + k, image, pcm[k * spf : (k + 1) * spf], answer.id, sentence if first else None
                    )
                )
                first = False
            if done == 0 and "render_first" not in answer.timings.seconds:
                answer.timings.add("render_first", time.perf_counter() - t0)
                answer.timings.add("drawn_at", time.monotonic() - answer.heard_at)
            if not self._push(frames, start + done, answer):
                return
            done += len(frames)

    def _push(self, frames: list[LiveFrame], start: int, answer: _Answer | None) -> bool:
        """Queue frames drawn from index `start`; False when they are no longer wanted (the answer was
        interrupted, or the timeline moved). Waits while enough frames are ahead."""
        limit = max(len(frames), round(self.options.speech_ahead_s * self.options.fps))
        with self._cond:
            while len(self._frames) >= limit and not self._closing.is_set():
                if answer is not None and answer.finished:
                    return False
                self._cond.wait(0.1)
            unwanted = answer is not None and answer.finished
            if self._closing.is_set() or unwanted or start != self._next_index:
                return False
            if answer is None and not self._inbox.empty():
                return False  # an answer is ready: it takes these frames' place
            if self._pending_end and frames:
                frames[0] = replace(frames[0], ending=self._pending_end)
                self._pending_end = 0
            self._frames.extend(frames)
            self._next_index = start + len(frames)
            self._cond.notify_all()
            return True

    # ------------------------------------------------------------------ events
    def _error(self, error: TalkTwinError) -> None:
        self._emit({"type": "error", "error": error.code, "message": error.user_message(self.lang)})

    def _emit(self, event: dict[str, Any]) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("live event handler failed")
