"""The reply pipeline, pushed end to end.

Hermetic tier: a scripted chat model, real TTS (Piper, espeak-ng), the real renderer and encoder.
Real tier (`real_models`): Whisper, Qwen via llama.cpp, Piper, from a spoken question to the mp4.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memory.history import InProcessHistory
from pipeline.cancel import Cancelled, CancelToken, TookTooLong
from pipeline.config import Settings, load_settings
from pipeline.errors import ChatModelCrashed, EmptyText, NoFaceFound, TextTooLong
from pipeline.orchestrator import ReplyPipeline, ReplyRequest
from pipeline.render.factory import build_renderer
from pipeline.text import detect_language
from pipeline.tts.factory import build_synthesizer
from pipeline.types import VoiceSettings
from tests.helpers import NoRecognizer, ScriptedChat, lip_sync, probe_mp4, voice_note


@pytest.fixture(scope="module")
def hermetic(tmp_path_factory: pytest.TempPathFactory) -> ReplyPipeline:
    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_TTS__BACKEND": "auto",  # edge-tts is unreachable here: exercises the offline fallback
        }
    )
    return ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat(""),
        synthesizer=build_synthesizer(settings),
        renderer=build_renderer(settings),
        context=InProcessHistory(settings.memory.recent_turns),
    )


def ask(pipeline: ReplyPipeline, tmp_path: Path, answer: str, **request):
    pipeline.chat_model = ScriptedChat(answer)
    request.setdefault("user", "test:1")
    return pipeline.reply(ReplyRequest(**request), tmp_path / "reply.mp4")


def test_text_question_gives_a_video_of_the_spoken_answer(hermetic: ReplyPipeline, tmp_path: Path):
    events: list[str] = []
    hermetic.chat_model = ScriptedChat("Paris is the capital of France. It is famous for the Eiffel Tower.")
    result = hermetic.reply(
        ReplyRequest("test:en", text="What is the capital of France?"),
        tmp_path / "a.mp4",
        on_progress=lambda stage, info: events.append(stage),
    )
    assert result.answer == "Paris is the capital of France. It is famous for the Eiffel Tower."
    assert result.language == "en" and result.tts_engines == ("piper",)
    assert events.count("sentence") == 2 and events.count("rendered") == 2 and events[-1] == "done"
    info = probe_mp4(result.media_path)
    assert (info.video_codec, info.audio_codec, info.width) == ("h264", "aac", 256)
    assert info.duration == pytest.approx(result.duration, abs=0.2)
    assert len(info.frames) == pytest.approx(result.duration * 25, abs=1)
    sync = lip_sync(info)
    # lips part while speaking and close in the pauses (a still image gives r ~ 0)
    assert sync.correlation > 0.25 and sync.peak_open > 0.12 and sync.rest_open < 0.5 * sync.peak_open
    for stage in ("avatar", "llm", "tts", "render", "encode", "total"):
        assert result.timings.seconds[stage] > 0


def test_chinese_answer_is_spoken_by_the_offline_mandarin_voice(hermetic: ReplyPipeline, tmp_path: Path):
    result = ask(
        hermetic, tmp_path, "北京有故宫和长城。你可以去看看！", text="北京有什么好玩的？", subtitles=True
    )
    assert result.language == "zh" and result.tts_engines == ("mandarin",)
    assert result.answer == "北京有故宫和长城。你可以去看看！"
    system = hermetic.chat_model.calls[0][0]
    assert system.role == "system" and "中文" in system.content
    info = probe_mp4(result.media_path)
    assert info.duration == pytest.approx(result.duration, abs=0.2)
    band = info.frames[len(info.frames) // 3, -80:]
    assert (band > 235).all(axis=-1).sum() > 50  # white subtitle glyphs are burned in


def test_memory_carries_turns_per_conversation_only(hermetic: ReplyPipeline, tmp_path: Path):
    hermetic.context = InProcessHistory(turns=6)
    ask(hermetic, tmp_path, "Nice to meet you, Ada.", user="telegram:1", text="My name is Ada.")
    ask(hermetic, tmp_path, "Hello there, nice to meet you.", user="telegram:2", text="Hi!")
    ask(hermetic, tmp_path, "Your name is Ada.", user="telegram:1", text="What is my name?")
    contents = [m.content for m in hermetic.chat_model.calls[0]]
    assert "My name is Ada." in contents and "Nice to meet you, Ada." in contents
    ask(hermetic, tmp_path, "I do not know your name yet.", user="telegram:2", text="What is my name?")
    assert not any("Ada" in m.content for m in hermetic.chat_model.calls[0])


def test_a_video_with_a_longest_duration_is_cut_at_a_sentence(tmp_path: Path, hermetic: ReplyPipeline):
    """What a video note is to the pipeline: square frames and a longest duration."""
    answer = "This is the first sentence of a long answer. Here comes a second one that is long. And a third."
    result = ask(hermetic, tmp_path, answer, text="Tell me a story.", square=True, max_seconds=4.0)
    assert result.truncated and result.truncation == "max_seconds" and result.duration <= 4.0
    assert answer.startswith(result.answer) and result.answer != answer
    full = ask(hermetic, tmp_path, answer, text="Tell me a story.")
    assert not full.truncated and full.answer == answer and full.duration > 4.0


def test_an_empty_model_answer_still_gets_a_spoken_reply(hermetic: ReplyPipeline, tmp_path: Path):
    result = ask(hermetic, tmp_path, "  ** ", text="Hello?")
    assert result.answer == "Hmm, I don't have an answer to that."
    assert probe_mp4(result.media_path).duration > 1.0


def test_voice_settings_reach_the_voice(hermetic: ReplyPipeline, tmp_path: Path):
    slow = ask(
        hermetic,
        tmp_path,
        "Speaking slowly now, one word at a time.",
        text="Hi",
        voice=VoiceSettings(rate=-40),
    )
    fast = ask(
        hermetic,
        tmp_path,
        "Speaking slowly now, one word at a time.",
        text="Hi",
        voice=VoiceSettings(rate=60),
    )
    assert slow.duration > 1.4 * fast.duration


@pytest.mark.parametrize(
    ("request_kwargs", "error"),
    [
        ({"text": "  \n "}, EmptyText),
        ({"text": "x" * 5000}, TextTooLong),
        ({"text": "Hi", "avatar": b"GIF89a..."}, None),
    ],
)
def test_bad_input_is_refused_before_any_model_runs(
    hermetic: ReplyPipeline, tmp_path: Path, request_kwargs, error
):
    from pipeline.errors import UnreadableImage

    hermetic.chat_model = ScriptedChat("never")
    with pytest.raises(error or UnreadableImage) as err:
        hermetic.reply(ReplyRequest("test:bad", **request_kwargs), tmp_path / "bad.mp4")
    assert err.value.user_message("zh") and err.value.user_message("en")
    assert hermetic.chat_model.calls == [] and not (tmp_path / "bad.mp4").exists()


def test_a_photo_without_a_face_is_refused(hermetic: ReplyPipeline, tmp_path: Path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(buf, format="PNG")
    with pytest.raises(NoFaceFound):
        ask(hermetic, tmp_path, "never", text="Hi", avatar=buf.getvalue())


# ----------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def real_pipeline(models_installed: Settings) -> Iterator[ReplyPipeline]:
    settings = load_settings(
        environ={
            "TALKTWIN_LLM__TEMPERATURE": "0",
            "TALKTWIN_PATHS__DATA_DIR": str(models_installed.paths.data_dir),
        }
    )
    pipeline = ReplyPipeline.from_settings(settings)
    yield pipeline
    pipeline.close()  # its chat model server would otherwise live until the session ends


@pytest.mark.real_models
def test_spoken_question_end_to_end(real_pipeline: ReplyPipeline, tmp_path: Path):
    audio = voice_note(real_pipeline.synthesizer, "What is the capital city of France?", "en", tmp_path)
    result = real_pipeline.reply(ReplyRequest("test:e2e", audio=audio), tmp_path / "answer.mp4")
    heard = result.transcript.text.lower()
    assert "capital" in heard and "france" in heard and result.language == "en"
    assert "Paris" in result.answer
    info = probe_mp4(result.media_path)
    assert (info.video_codec, info.audio_codec, info.pix_fmt) == ("h264", "aac", "yuv420p")
    assert info.width == info.height == 512
    assert info.duration == pytest.approx(result.duration, abs=0.2)
    assert info.audio_duration == pytest.approx(result.duration, abs=0.2)
    sync = lip_sync(info)
    # lips part while speaking and close in the pauses (a still image gives r ~ 0); how wide they open
    # depends on the answer's vowels, which the real model chooses (0.117-0.15 seen)
    assert sync.correlation > 0.25 and sync.peak_open > 0.09 and sync.rest_open < 0.5 * sync.peak_open


@pytest.mark.real_models
def test_spoken_chinese_question_end_to_end(real_pipeline: ReplyPipeline, tmp_path: Path):
    # one sentence: a spoken Chinese answer of any length proves the path; each second is 25 frames at 512 px
    audio = voice_note(real_pipeline.synthesizer, "你好，请用一句话介绍一下你自己。", "zh", tmp_path)
    result = real_pipeline.reply(ReplyRequest("test:e2e-zh", audio=audio), tmp_path / "answer.mp4")
    assert result.transcript.language == "zh" and "介绍" in result.transcript.text
    assert result.language == "zh" and detect_language(result.answer) == "zh"
    assert result.tts_engines == ("mandarin",)
    info = probe_mp4(result.media_path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration == pytest.approx(result.duration, abs=0.2)


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_sentences_overlap_or_take_turns_with_the_same_result(
    hermetic: ReplyPipeline, tmp_path: Path, overlap
):
    settings = load_settings(
        environ={
            "TALKTWIN_REPLY__OVERLAP": overlap,
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
        }
    )
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat(""),
        synthesizer=hermetic.synthesizer,
        renderer=hermetic.renderer,
        context=InProcessHistory(),
    )
    assert pipeline.overlap is (overlap == "on")
    result = ask(pipeline, tmp_path, "The first sentence is here. And this is the second one.", text="Hi")
    assert result.answer == "The first sentence is here. And this is the second one."
    assert probe_mp4(result.media_path).duration == pytest.approx(result.duration, abs=0.2)


def test_voice_format_gives_an_opus_voice_message_without_rendering(hermetic: ReplyPipeline, tmp_path: Path):
    import av

    result = ask(hermetic, tmp_path, "Here is my answer as a voice message.", text="Hi", format="voice")
    assert result.format == "voice" and "render" not in result.timings.seconds
    with av.open(str(result.media_path)) as box:
        assert box.format.name == "ogg" and not box.streams.video
        assert box.streams.audio[0].codec_context.name == "opus"
        assert box.duration / 1e6 == pytest.approx(result.duration, abs=0.1)


def test_text_format_answers_without_speech(hermetic: ReplyPipeline, tmp_path: Path):
    result = ask(hermetic, tmp_path, "Just text this time.", text="Hi", format="text")
    assert result.media_path is None and result.answer == "Just text this time." and result.duration == 0
    assert "tts" not in result.timings.seconds


def test_speak_says_a_fixed_line_with_the_given_avatar(hermetic: ReplyPipeline, tmp_path: Path, avatar_bytes):
    hermetic.chat_model = ScriptedChat("never used")
    result = hermetic.speak(
        "Hi! I am your new twin.", ReplyRequest("test:new", avatar=avatar_bytes), tmp_path / "p.mp4"
    )
    assert result.answer == "Hi! I am your new twin." and hermetic.chat_model.calls == []
    assert probe_mp4(result.media_path).duration == pytest.approx(result.duration, abs=0.2)


class SlowChat(ScriptedChat):
    """Writes its answer word by word, `delay_s` per word (a model on a busy machine)."""

    def __init__(self, answer: str, delay_s: float) -> None:
        super().__init__(answer)
        self.delay_s = delay_s

    def stream(self, messages, *, max_tokens, temperature):
        for piece in super().stream(messages, max_tokens=max_tokens, temperature=temperature):
            time.sleep(self.delay_s)
            yield piece


def _pipeline_with(hermetic: ReplyPipeline, tmp_path: Path, chat, **env: str) -> ReplyPipeline:
    settings = load_settings(
        environ={"TALKTWIN_RENDER__SIZE": "256", "TALKTWIN_PATHS__DATA_DIR": str(tmp_path), **env}
    )
    return ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=chat,
        synthesizer=hermetic.synthesizer,
        renderer=hermetic.renderer,
        context=InProcessHistory(),
    )


def test_a_cancelled_reply_stops_and_leaves_nothing_behind(hermetic: ReplyPipeline, tmp_path: Path):
    pipeline = _pipeline_with(
        hermetic, tmp_path, SlowChat("one two three four five six seven eight nine.", 0.2)
    )
    token = CancelToken()
    threading.Timer(0.5, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled) as err:
        pipeline.reply(ReplyRequest("test:c", text="Count for me.", cancel=token), tmp_path / "c.mp4")
    assert time.monotonic() - started < 1.5  # stopped at the next piece, not after the whole answer
    assert err.value.user_message("zh") == "好的，我已停止处理。"
    assert not (tmp_path / "c.mp4").exists()


def test_a_reply_over_its_time_limit_is_stopped(hermetic: ReplyPipeline, tmp_path: Path):
    pipeline = _pipeline_with(
        hermetic, tmp_path, SlowChat("slow words keep coming here.", 0.4), TALKTWIN_REPLY__TIMEOUT_S="0.6"
    )
    with pytest.raises(TookTooLong):
        pipeline.reply(ReplyRequest("test:t", text="Hi"), tmp_path / "t.mp4")
    assert not (tmp_path / "t.mp4").exists()


class SlowSynthesizer:
    """The real voice, `delay_s` slower per sentence (a TTS server that hangs)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def synthesize(self, text, language, voice):
        time.sleep(self.delay_s)
        return self.inner.synthesize(text, language, voice)


class SlowRenderer:
    """The real renderer, `delay_s` slower per batch of frames (an overloaded machine)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def prepare(self, image, size):
        return self.inner.prepare(image, size)

    def session(self, avatar, *, fps):
        return SlowSession(self.inner.session(avatar, fps=fps), self.delay_s)


class SlowSession:
    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def feed(self, speech, **kwargs):
        for frames in self.inner.feed(speech, **kwargs):
            time.sleep(self.delay_s)
            yield frames

    def finish(self):
        return self.inner.finish()


@pytest.mark.parametrize("stage", ["tts", "render"])
def test_a_stuck_stage_stops_the_reply_at_its_own_limit(hermetic: ReplyPipeline, tmp_path: Path, stage: str):
    settings = load_settings(
        environ={
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
            f"TALKTWIN_REPLY__{stage.upper()}_TIMEOUT_S": "0.5",
        }
    )
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat("First sentence here. Second one now. A third to finish."),
        synthesizer=SlowSynthesizer(hermetic.synthesizer, 0.4 if stage == "tts" else 0.0),
        renderer=SlowRenderer(hermetic.renderer, 0.2 if stage == "render" else 0.0),
        context=InProcessHistory(),
    )
    started = time.monotonic()
    with pytest.raises(TookTooLong) as err:
        pipeline.reply(ReplyRequest("test:st", text="Tell me three things."), tmp_path / "st.mp4")
    assert err.value.stage == stage
    assert time.monotonic() - started < settings.reply.timeout_s / 10  # long before the reply's own limit
    assert "took too long" in err.value.user_message("en") and "太长" in err.value.user_message("zh")
    assert not (tmp_path / "st.mp4").exists()


def test_stage_time_adds_up_over_the_reply_and_counts_while_running():
    token = CancelToken()
    token.limit_stage("tts", 0.25)
    with token.stage("render"):  # a stage without a limit never stops the reply
        time.sleep(0.3)
    for _ in range(2):
        with token.stage("tts"):
            time.sleep(0.1)
    token.check()  # 0.2 s of speech so far: within the limit
    with token.stage("tts"), pytest.raises(TookTooLong) as err:
        time.sleep(0.1)
        token.check()  # seen from inside the stage, before it ends
    assert err.value.stage == "tts"
    assert token.spent("tts") == pytest.approx(0.3, abs=0.05)


def test_a_model_writing_too_long_is_cut_and_the_answer_so_far_spoken(
    hermetic: ReplyPipeline, tmp_path: Path
):
    class StallingChat(ScriptedChat):
        def stream(self, messages, *, max_tokens, temperature):
            yield "This first sentence arrives quickly. "
            for word in ["and", "then", "the", "model", "stalls", "for", "ages"]:
                time.sleep(0.4)
                yield word + " "

    pipeline = _pipeline_with(hermetic, tmp_path, StallingChat(""), TALKTWIN_REPLY__LLM_TIMEOUT_S="0.5")
    result = pipeline.reply(ReplyRequest("test:s", text="Hi"), tmp_path / "s.mp4")
    assert result.answer.startswith("This first sentence arrives quickly.")
    assert "ages" not in result.answer and probe_mp4(result.media_path).duration > 1


class CutOffChat(ScriptedChat):
    """Stops at its token limit in the middle of its second sentence, and says so."""

    def stream(self, messages, *, max_tokens, temperature):
        yield from super().stream(messages, max_tokens=max_tokens, temperature=temperature)
        return "length"


def test_a_sentence_the_model_was_cut_off_in_is_never_spoken(hermetic: ReplyPipeline, tmp_path: Path):
    chat = CutOffChat("The moon circled the quiet village every night. One evening it noticed that the")
    result = _pipeline_with(hermetic, tmp_path, chat).reply(
        ReplyRequest("test:c", text="A story"), tmp_path / "c.mp4"
    )
    assert result.answer == "The moon circled the quiet village every night."
    assert result.truncated and result.truncation == "token_limit"


def test_a_model_that_finishes_is_spoken_to_its_last_word(hermetic: ReplyPipeline, tmp_path: Path):
    chat = ScriptedChat("Paris is the capital. It lies on the Seine")
    result = _pipeline_with(hermetic, tmp_path, chat).reply(
        ReplyRequest("test:f", text="Paris?"), tmp_path / "f.mp4"
    )
    assert result.answer == "Paris is the capital. It lies on the Seine" and not result.truncated


class CrashingChat(ScriptedChat):
    """Its process 'dies' after the first piece of each of its first `crashes` answers."""

    def __init__(self, answer: str, crashes: int) -> None:
        super().__init__(answer)
        self.crashes = crashes

    def stream(self, messages, *, max_tokens, temperature):
        pieces = super().stream(messages, max_tokens=max_tokens, temperature=temperature)
        yield next(pieces)
        if len(self.calls) <= self.crashes:
            raise ChatModelCrashed("the chat model server at 127.0.0.1 failed: peer closed connection")
        yield from pieces


def test_a_chat_model_crash_mid_answer_costs_one_retry(hermetic: ReplyPipeline, tmp_path: Path):
    chat = CrashingChat("Bonjour from the second attempt. Nothing of the first one is kept.", crashes=1)
    pipeline = _pipeline_with(hermetic, tmp_path, chat, TALKTWIN_REPLY__OVERLAP="on")
    result = pipeline.reply(ReplyRequest("test:r", text="Hi"), tmp_path / "r.mp4")
    assert len(chat.calls) == 2
    assert result.answer == "Bonjour from the second attempt. Nothing of the first one is kept."
    assert probe_mp4(result.media_path).duration == pytest.approx(result.duration, abs=0.2)


def test_a_chat_model_that_crashes_twice_gets_a_clear_sorry(hermetic: ReplyPipeline, tmp_path: Path):
    chat = CrashingChat("Never heard.", crashes=2)
    pipeline = _pipeline_with(hermetic, tmp_path, chat)
    with pytest.raises(ChatModelCrashed) as err:
        pipeline.reply(ReplyRequest("test:x", text="你好"), tmp_path / "x.mp4")
    assert len(chat.calls) == 2 and not (tmp_path / "x.mp4").exists()
    assert err.value.user_message("zh").startswith("抱歉") and "again" in err.value.user_message("en")
    # the next message is answered as usual
    chat.answer = "Still here."
    assert pipeline.reply(ReplyRequest("test:x", text="Hi"), tmp_path / "y.mp4").answer == "Still here."
