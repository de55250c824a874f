"""Turn-taking in a live conversation: the real Silero VAD on Piper's speech, and an answer started at
the user's pause that is shown only when their turn ends, or dropped when they go on speaking."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from memory.keys import user_key
from pipeline.live.conversation import LiveConversation
from pipeline.live.options import LiveOptions
from pipeline.live.vad import RATE, TurnDetector
from pipeline.media.audio_input import resample
from pipeline.orchestrator import ReplyPipeline
from pipeline.tts.piper import PiperSynthesizer
from pipeline.types import VoiceSettings
from tests.live_helpers import live_stack

ANSWER = "Paris is the capital of France."


@pytest.fixture(scope="module")
def piper(models_installed) -> PiperSynthesizer:
    return PiperSynthesizer(models_installed.resolve(models_installed.tts.piper_voice))


def spoken(piper: PiperSynthesizer, text: str) -> np.ndarray:
    """`text` in Piper's voice at 16 kHz, without its leading and trailing silence."""
    samples = resample(piper.synthesize(text, "en", VoiceSettings()).audio, RATE).samples
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return samples[loud[0] : loud[-1] + 1]


def silence(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000), np.float32)


def kinds(detector: TurnDetector, audio: np.ndarray) -> list[str]:
    events = []
    for i in range(0, len(audio), 320):  # 20 ms packets, as from a microphone
        events += detector.feed(audio[i : i + 320])
    return [e.kind for e in events]


def test_a_short_silence_is_a_pause_and_speech_after_it_a_resume(piper):
    first, second = spoken(piper, "What is the capital"), spoken(piper, "of France?")
    audio = np.concatenate([silence(300), first, silence(280), second, silence(700)])
    detector = TurnDetector(end_silence_ms=400, pause_silence_ms=160)
    assert kinds(detector, audio) == ["maybe", "start", "pause", "resume", "pause", "end"]
    # without pauses, only the turn itself
    assert kinds(TurnDetector(end_silence_ms=400), audio) == ["maybe", "start", "end"]
    # a pause as long as the end of the turn is no pause
    assert kinds(TurnDetector(end_silence_ms=400, pause_silence_ms=400), audio) == ["maybe", "start", "end"]


def test_while_the_user_speaks_the_detector_reports_their_words_so_far(piper):
    question = spoken(piper, "Could you please tell me what the capital city of France is called?")
    audio = np.concatenate([silence(300), question, silence(700)])
    events = []
    detector = TurnDetector(end_silence_ms=400, pause_silence_ms=160, progress_ms=1000)
    for i in range(0, len(audio), 320):
        events += detector.feed(audio[i : i + 320])
    progress = [e for e in events if e.kind == "progress"]
    assert len(progress) >= 2, [e.kind for e in events]
    assert [e.kind for e in events if e.kind != "progress"][-2:] == ["pause", "end"]
    lengths = [len(e.audio) for e in progress]
    assert lengths == sorted(lengths) and all(b - a >= 0.96 * RATE for a, b in itertools.pairwise(lengths))
    end = next(e for e in events if e.kind == "end")
    assert all(np.array_equal(e.audio, end.audio[: len(e.audio)]) for e in progress)  # the same audio, so far
    assert "progress" not in kinds(TurnDetector(end_silence_ms=400), audio)  # off unless asked


@pytest.fixture(scope="module")
def blips(piper: PiperSynthesizer) -> list[tuple[np.ndarray, list[str]]]:
    """Moments of speech shorter than min_speech_ms (128 ms): 48 to 80 ms from a few places in two
    words, each with the events a fresh detector gives for it (after silence, and silence after).
    Piper's voice varies from one synthesis to the next, so every test here reads the same ones."""
    out = []
    for text in ("Hello", "Yes"):
        word = spoken(piper, text)
        for at in (len(word) // 4, len(word) // 3, len(word) // 2):
            for ms in (48, 64, 80):  # 96 ms started a turn in 4 of 240 tries
                piece = word[at : at + int(RATE * ms / 1000)]
                audio = np.concatenate([silence(300), piece, silence(600)])
                out.append((piece, kinds(TurnDetector(min_speech_ms=128), audio)))
    return out


def test_a_moment_of_speech_is_a_maybe_then_nothing(blips):
    """Shorter than min_speech_ms: the detector may say it could be speech, then that it was not a
    turn; it never starts one. (Which lengths Silero hears as speech varies with Piper's voice.)"""
    seen = [events for _, events in blips]
    assert all(events in ([], ["maybe", "nothing"]) for events in seen), seen
    assert ["maybe", "nothing"] in seen, seen


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplyPipeline]:
    for _, pipeline in live_stack(tmp_path_factory.mktemp("turns"), ANSWER):
        yield pipeline


def converse(
    pipeline: ReplyPipeline, audio: np.ndarray, user: str, **options: float
) -> tuple[list[dict], LiveConversation]:
    """Feed `audio` in real time, then read frames until the answer has been shown; the events."""
    events: list[dict] = []
    options = LiveOptions(**{"size": 256, "end_silence_ms": 400, "think_after_ms": 160, **options})
    live = LiveConversation(pipeline, user=user, options=options, on_event=events.append)
    live.start()
    try:
        for i in range(0, len(audio), 320):
            live.hear(audio[i : i + 320])
            live.read()
            time.sleep(0.02)
        deadline = time.monotonic() + 120
        while not [e for e in events if e["type"] == "idle"][1:] or live.busy:
            assert time.monotonic() < deadline, events
            live.read()
            time.sleep(0.01)
    finally:
        live.close()
    return events, live


def test_an_answer_started_at_a_pause_is_dropped_when_the_user_goes_on(pipeline, piper):
    first, second = spoken(piper, "What is the capital"), spoken(piper, "of France?")
    # a pause long enough to start answering (and for Whisper to finish), too short to end the turn
    audio = np.concatenate([silence(500), first, silence(330), second, silence(900)])
    events, live = converse(pipeline, audio, user_key("http", "carol"))
    heard = [e for e in events if e["type"] == "heard"]
    assert len(heard) == 1 and "france" in heard[0]["text"].lower(), events
    assert [e["text"] for e in events if e["type"] == "answer"] == [ANSWER]
    assert live.counts["answers"] == 1
    assert not [e for e in events if e["type"] == "error"]


def test_a_moment_of_speech_holds_the_twin_and_it_carries_on(pipeline, piper, blips):
    """While the twin talks, a blip of speech holds it (silent at once) and it then goes on: no barge-in."""
    question = np.concatenate([silence(500), spoken(piper, "What is the capital of France?"), silence(900)])
    heard = [piece for piece, events in blips if events == ["maybe", "nothing"]]
    assert heard, blips
    longest = max(heard, key=len)  # the surest to be heard again
    blip = np.concatenate([longest, silence(600)])
    events: list[dict] = []
    options = LiveOptions(size=256, end_silence_ms=400, think_after_ms=160)
    live = LiveConversation(pipeline, user=user_key("http", "erin"), options=options, on_event=events.append)
    live.start()
    blip_sent, held, shown_while_held = False, 0, 0
    try:
        mic = list(question)
        deadline = time.monotonic() + 120
        while not [e for e in events if e["type"] == "idle"][1:] or live.busy:
            assert time.monotonic() < deadline, events
            if not mic and not blip_sent and [e for e in events if e["type"] == "speaking"]:
                mic, blip_sent = list(blip), True  # the twin is talking: a blip of speech
            if mic:
                live.hear(np.array(mic[:320], np.float32))
                del mic[:320]
            was_holding = live.holding
            frame = live.read()
            if was_holding and live.holding:
                held += 1
                shown_while_held += frame is not None
            time.sleep(0.02)
    finally:
        live.close()
    assert held > 0 and shown_while_held == 0
    assert live.counts == {"answers": 1, "interrupted": 0}
    assert [e["text"] for e in events if e["type"] == "answer"] == [ANSWER]
    assert not [e for e in events if e.get("interrupted")]


def test_an_answer_started_at_the_last_pause_is_the_one_shown(pipeline, piper):
    audio = np.concatenate([silence(500), spoken(piper, "What is the capital of France?"), silence(900)])
    events, _ = converse(pipeline, audio, user_key("http", "dave"))
    speaking = [e for e in events if e["type"] == "speaking"]
    assert len(speaking) == 1 and "started_before_end" in speaking[0]["timings"], speaking
    heard = [e for e in events if e["type"] == "heard"]
    assert len(heard) == 1 and "capital" in heard[0]["text"].lower()
    assert [e["text"] for e in events if e["type"] == "answer"] == [ANSWER]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_the_model_reads_a_long_question_while_the_user_is_still_saying_it(pipeline, piper):
    """Every second of speech, Whisper hears the words so far and the model reads the prompt they
    begin (a one-token request): at the end only the question's last words are left to read."""
    text = "Could you please tell me what the capital city of France is called?"
    audio = np.concatenate([silence(500), spoken(piper, text), silence(900)])
    chat = pipeline.chat_model
    before = len(chat.calls)
    events, live = converse(pipeline, audio, user_key("http", "mia"), read_ahead_ms=1000)
    heard = [e for e in events if e["type"] == "heard"]
    assert len(heard) == 1 and [e["text"] for e in events if e["type"] == "answer"] == [ANSWER], events
    calls = list(zip(chat.calls[before:], chat.max_tokens[before:], strict=True))
    answer_at = next(i for i, (_, n) in enumerate(calls) if n > 1)
    ahead = [_words(p[-1].content) for p, n in calls[:answer_at] if n == 1 and p[-1].content != "Hi"]
    assert ahead, calls
    final = _words(heard[0]["text"])
    # the words so far begin the question (Whisper may hear the last, unfinished word otherwise)
    assert any(len(w) >= 3 and final[: len(w) - 1] == w[:-1] for w in ahead), (ahead, final)
    assert live.counts["answers"] == 1


class RecordingVoice:
    """The pipeline's voice, keeping the texts it was given."""

    def __init__(self, voice) -> None:  # type: ignore[no-untyped-def]
        self.voice, self.texts = voice, []

    def synthesize(self, text, language, settings):  # type: ignore[no-untyped-def]
        self.texts.append(text)
        return self.voice.synthesize(text, language, settings)


def test_an_english_answer_may_begin_with_a_phrase_said_as_one_that_goes_on(pipeline, piper):
    """The first sentence has no comma: its first words are said as soon as a phrase ends, with the
    voice's comma (a phrase that goes on); memory keeps the sentence whole."""
    chat, voice, user = pipeline.chat_model, pipeline.synthesizer, user_key("http", "olga")
    answer = "The sky is blue because of the scattering of light."
    chat.answer, pipeline.synthesizer = answer, RecordingVoice(voice)
    try:
        audio = np.concatenate([silence(500), spoken(piper, "Why is the sky blue?"), silence(900)])
        events, live = converse(pipeline, audio, user)
        said = pipeline.synthesizer.texts
    finally:
        chat.answer, pipeline.synthesizer = ANSWER, voice
    assert [e["text"] for e in events if e["type"] == "answer"] == [
        "The sky is blue",
        "because of the scattering of light.",
    ]
    assert said == ["The sky is blue,", "because of the scattering of light."]
    history = pipeline.context.context_for(user, user, "?").history
    assert history[-1].content == answer and live.counts["answers"] == 1


def test_a_question_in_another_language_keeps_the_sessions_persona(pipeline):
    """A Chinese question in a session opened in English: the model is asked under the English
    persona it has already read (primed), and told to answer in Chinese."""
    from pipeline.answer_policy import ANSWER_IN
    from pipeline.tts.mandarin import MandarinSynthesizer

    speech = MandarinSynthesizer().synthesize("法国的首都是哪里？", "zh", VoiceSettings())
    question = resample(speech.audio, RATE).samples
    audio = np.concatenate([silence(500), question, silence(900)])
    chat = pipeline.chat_model
    before = len(chat.calls)
    events, live = converse(pipeline, audio, user_key("http", "lei"))
    heard = [e for e in events if e["type"] == "heard"]
    assert heard and heard[0]["language"] == "zh", events
    prompts = chat.calls[before:]  # primed at the start, the answer, primed after the turn
    assert len(prompts) >= 2 and all(p[0].content == prompts[0][0].content for p in prompts)
    assert prompts[0][0].content.startswith(pipeline.settings.llm.persona_en)
    answered = [p for p, n in zip(prompts, chat.max_tokens[before:], strict=True) if n > 1]
    assert len(answered) == 1 and answered[0][-1].content.endswith(ANSWER_IN["zh"])
    assert answered[0][-1].content.startswith(heard[0]["text"])
    assert live.persona_lang == "en" and live.lang == "zh"


class GatedSummarizer:
    """Memory's summary writer: one piece, held at `gate` until the test lets it go."""

    def __init__(self) -> None:
        self.calls, self.gate = 0, threading.Event()

    def stream(self, messages, *, max_tokens: int, temperature: float) -> Iterator[str]:  # type: ignore[no-untyped-def]
        self.calls += 1
        self.gate.wait(30)
        yield "The user asked many short questions."


def test_memory_summaries_wait_for_quiet_moments_and_are_given_up_when_the_user_speaks(pipeline, piper):
    """A live question never waits for a summary: none is written in the background during the
    session; the conversation writes it once the user is quiet, and gives it up when they speak."""
    store, user = pipeline.context, user_key("http", "grace")
    summarizer = GatedSummarizer()
    store.summarize_with(summarizer)
    store.hold_summaries(user)  # a long thread, not summarised yet
    for i in range(store.recent_turns + store.fold_every + 1):
        store.record_turn(user, user, f"Question {i}", f"Answer {i}")
    summarizer.gate.clear()
    events: list[dict] = []
    options = LiveOptions(size=256, end_silence_ms=400, think_after_ms=160, summary_after_quiet_s=0.3)
    live = LiveConversation(pipeline, user=user, options=options, on_event=events.append)
    live.start()
    store.release_summaries(user)  # now only the live conversation holds them
    try:
        deadline = time.monotonic() + 60
        while not summarizer.calls:  # the user is quiet: a summary starts (held at the gate)
            assert time.monotonic() < deadline
            live.read()
            time.sleep(0.02)
        question = np.concatenate(
            [silence(300), spoken(piper, "What is the capital of France?"), silence(900)]
        )
        for i in range(0, len(question), 320):
            live.hear(question[i : i + 320])
            live.read()
            time.sleep(0.02)
            if not summarizer.gate.is_set() and [e for e in events if e["type"] == "listening"]:
                summarizer.gate.set()  # the user is speaking: the summary goes on, sees it and gives up
        while not [e for e in events if e["type"] == "idle"][1:] or live.busy:
            assert time.monotonic() < deadline, events
            live.read()
            time.sleep(0.02)
        assert [e["text"] for e in events if e["type"] == "answer"] == [ANSWER]
        assert summarizer.calls == 1 and store.needs_summary(user)  # given up: nothing written
        while store.needs_summary(user):  # quiet again: written this time
            assert time.monotonic() < deadline
            live.read()
            time.sleep(0.02)
        assert summarizer.calls == 2
        notes = store.context_for(user, user, "?").notes
        assert any("many short questions" in note for note in notes), notes
    finally:
        live.close()
        store.chat_model, store.summarize = None, False
    assert not store.needs_summary(user)


class _Pipeline:
    def __init__(self, settings, chat_model) -> None:
        self.settings, self.chat_model = settings, chat_model


def test_live_conversations_can_answer_with_a_model_of_their_own(tmp_path):
    """`[live] chat_model`: live answers come from that model (built once), replies keep theirs."""
    from pipeline.config import load_settings
    from pipeline.live.options import live_chat_model
    from tests.helpers import ScriptedChat
    from tests.test_llm import FakeOpenAIServer

    with FakeOpenAIServer(["Quick", " answer."]) as server:
        env = {
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
            "TALKTWIN_LLM__BACKEND": "openai",
            "TALKTWIN_LLM__BASE_URL": server.base_url,
            "TALKTWIN_LLM__MODEL": "replies-model",
        }
        replies_model = ScriptedChat(ANSWER)
        same = _Pipeline(load_settings(environ=env), replies_model)
        assert live_chat_model(same) is replies_model
        own_settings = load_settings(environ=env | {"TALKTWIN_LIVE__CHAT_MODEL": "live-model"})
        own = _Pipeline(own_settings, replies_model)
        model = live_chat_model(own)
        assert model is not replies_model and live_chat_model(own) is model
        assert "".join(model.stream([], max_tokens=8, temperature=0)) == "Quick answer."
        assert server.requests[-1][1]["model"] == "live-model"
