"""The answer policy: requests the twin cannot do, long texts read back, and the user's facts spoken as
the twin's own (pipeline/answer_policy.py), alone and through the pipeline's prompt and model stage."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.answer_policy import (
    ABOUT_TWIN,
    ANSWER_IN,
    CANNOT,
    COPY_FALLBACK,
    SHORT_COPY_FALLBACK,
    UNKNOWN_FACT,
    Prompt,
    about_the_user,
    about_twin,
    cannot_do,
    hush_request,
    is_parroting,
    is_refusal,
    plan_answer,
    respond,
    speak_to_user,
    states_own_fact,
)
from pipeline.config import load_settings
from pipeline.context import ReplyContext
from pipeline.llm.base import ChatMessage, ChatStream
from pipeline.orchestrator import ReplyPipeline, ReplyRequest
from tests.helpers import NoRecognizer

SETTINGS = load_settings(environ={})
TRANSCRIPT = (
    "Hello. Hello. Oh, hello, hi. This is Diane in New Jersey. Um, I'm calling because the package I ordered "
    "two weeks ago still hasn't arrived, and the tracking number you sent me doesn't work on the website. "
    "Could somebody please call me back at the number on my account? I'm home all afternoon. Thank you. Bye."
)


class FakeChat:
    """Streams the given answers in turn, word by word, and says it finished; records what it was asked."""

    def __init__(self, *answers: str, finish: str = "stop") -> None:
        self.answers = list(answers)
        self.finish = finish
        self.calls: list[tuple[list[ChatMessage], float]] = []

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float) -> ChatStream:
        self.calls.append((list(messages), temperature))
        answer = self.answers.pop(0)
        pieces = list(answer) if any("\u4e00" <= c <= "\u9fff" for c in answer) else answer.split(" ")
        for i, piece in enumerate(pieces):
            yield piece if i == 0 or not piece.isascii() else " " + piece
        return self.finish  # type: ignore[return-value]


def run(stream: ChatStream) -> tuple[str, object, int]:
    """(text, finish reason, number of pieces) of a stream."""
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            return "".join(pieces), done.value, len(pieces)


def messages_for(
    question: str, language: str = "en", context: ReplyContext | None = None
) -> list[ChatMessage]:
    shim = SimpleNamespace(settings=SETTINGS)  # _messages only reads settings
    return ReplyPipeline._messages(shim, question, language, context or ReplyContext())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ what the twin cannot do
@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("Set an alarm for 7 am tomorrow.", "alarm"),
        ("Can you set a timer for ten minutes?", "alarm"),
        ("Remind me to call my mom at 6 pm.", "alarm"),
        ("Wake me up at six.", "alarm"),
        ("What's the weather going to be like in Boston tomorrow?", "weather"),
        ("Will it rain today?", "weather"),
        ("What's in the news today?", "live"),
        ("What is Apple's stock price?", "live"),
        ("Can you call my wife and tell her I'll be late?", "call"),
        ("Send a message to John saying I'm late.", "call"),
        ("Turn off the lights in the living room.", "device"),
        ("Play some music.", "device"),
        ("Search the internet for cheap flights to Rome.", "browse"),
        ("明天早上七点叫醒我。", "alarm"),
        ("帮我设一个十分钟的计时器。", "alarm"),
        ("提醒我下午三点开会。", "alarm"),
        ("明天北京天气怎么样？", "weather"),
        ("今天会下雨吗？", "weather"),
        ("现在苹果公司的股价是多少？", "live"),
        ("今天有什么新闻？", "live"),
        ("给我妈妈打个电话。", "call"),
        ("给我妈妈发个消息，说我今晚不回家吃饭。", "call"),
        ("帮我把客厅的灯关掉。", "device"),
        ("帮我上网搜一下机票。", "browse"),
    ],
)
def test_requests_the_twin_cannot_do_are_recognised_in_both_languages(question: str, kind: str):
    found = cannot_do(question, "en")
    assert found is not None and found[0] == kind, found


@pytest.mark.parametrize(
    "question",
    [
        "How do weather forecasts work?",
        "Who invented the alarm clock?",
        "How do I set an alarm on my phone?",
        "What is the weather like in London in July?",
        "What do you call a baby cat?",
        "Call me Ishmael.",
        "Can you remind me what we talked about?",
        "Translate to English: 今天天气很好。",
        "I want to call my mom tonight, what should I say?",
        "天气预报是怎么做出来的？",
        "怎样才能记住每天要做的事情？",
        "北京冬天冷不冷？",
        "你能提醒我刚才说了什么吗？",
        "这首歌是谁唱的？",
        "What can you do?",
    ],
)
def test_questions_about_those_things_are_left_to_the_model(question: str):
    assert cannot_do(question, "en") is None


@pytest.mark.parametrize(
    "message",
    [
        "Wait, stop please.",
        "Stop.",
        "OK, that's enough.",
        "Hold on a second.",
        "Never mind.",
        "等一下，停。",
        "好了，别说了。",
        "够了",
        "停一下吧",
        "安静一下",
    ],
)
def test_a_request_to_stop_is_acknowledged_without_the_model(message: str):
    """Said over a live answer, "Wait, stop please." got "I'm sorry, but I can't assist with that."
    from the 1.5B: the twin acknowledges briefly instead, in the reply language."""
    chat = FakeChat()
    for language, ok in (("en", "OK."), ("zh", "好的。")):
        messages = messages_for(message, language)
        assert run(respond(chat, messages, max_tokens=96, temperature=0.7))[:2] == (ok, "stop")
    assert chat.calls == []


@pytest.mark.parametrize(
    "message",
    [
        "How do I stop procrastinating?",
        "Stop smoking tips",
        "Wait, what is the capital of France?",
        "Don't stop",
        "What does 'enough' mean?",
        "等一下，法国的首都是哪里？",
        "好了，给我讲个故事",
        "停车场在哪里？",
        "算了吧，我们聊聊猫",
        "OK",
        "好的",
    ],
)
def test_a_question_that_starts_with_wait_or_mentions_stopping_is_answered(message: str):
    assert not hush_request(message)


def test_a_long_run_of_stop_words_is_not_a_stop_request_and_is_judged_at_once():
    # the phrases overlap ("wait a second" = "wait" + "a second"): without a length cap, 16 of
    # these took a second to reject and each one more doubled it
    started = time.monotonic()
    assert not hush_request("wait a second " * 200 + "x")
    assert not hush_request("wait a second " * 200)
    assert time.monotonic() - started < 1.0


def test_the_honest_answer_is_in_the_reply_language():
    assert cannot_do("Set an alarm for 7 am.", "zh") == ("alarm", CANNOT["alarm"][1])
    assert cannot_do("明天天气怎么样？", "en") == ("weather", CANNOT["weather"][0])


def test_a_long_text_that_mentions_a_call_is_framed_not_refused():
    plan = plan_answer(TRANSCRIPT, "en", ReplyContext())
    assert plan.fixed is None and plan.monologue


# ------------------------------------------------------------------------------ copying the message
def test_a_transcript_read_back_is_parroting():
    assert is_parroting(TRANSCRIPT[:200], TRANSCRIPT)
    assert is_parroting("Sure. " + TRANSCRIPT[40:260], TRANSCRIPT)
    zh = "喂？喂，你好你好。我是住在新泽西的王丽。嗯，我打电话是因为我两个星期前买的一个包裹到现在还没到。"
    assert is_parroting(zh[:40], zh)


def test_a_reply_that_restates_the_question_is_not_parroting():
    assert not is_parroting(
        "Diane's package from two weeks ago hasn't arrived and her tracking number fails; she wants a call "
        "back this afternoon.",
        TRANSCRIPT,
    )
    assert not is_parroting("The capital of France is Paris.", "What is the capital of France?")
    assert not is_parroting("中国最长的河流是长江，全长约六千三百公里。", "中国最长的河流是哪一条？")


def test_a_long_message_is_framed_as_a_text_to_respond_to():
    messages = messages_for(TRANSCRIPT)
    user = messages[-1].content
    assert TRANSCRIPT in user and user.index(TRANSCRIPT) < user.index("Do not repeat or quote it")
    zh = "好，那我说一下今天开会的要点。" * 8
    assert "不要复述或引用原文" in messages_for(zh, "zh")[-1].content
    assert messages_for("What is the capital of France?")[-1].content == "What is the capital of France?"


def test_a_copy_is_asked_for_again_and_a_second_copy_is_replaced():
    summary = "Diane's package has not arrived and she would like a call back this afternoon."
    chat = FakeChat(TRANSCRIPT[:180], summary)
    text, finish, pieces = run(respond(chat, messages_for(TRANSCRIPT), max_tokens=96, temperature=0.7))
    assert text == summary and finish == "stop"
    assert len(chat.calls) == 2 and chat.calls[1][1] <= 0.3  # the second try is cooler and stricter
    assert "In at most twenty words" in chat.calls[1][0][-1].content
    assert pieces > 1  # empty pieces while held, so the caller can cancel between tokens

    chat = FakeChat(TRANSCRIPT[:180], TRANSCRIPT[20:200])
    text, finish, _ = run(respond(chat, messages_for(TRANSCRIPT), max_tokens=96, temperature=0.7))
    assert text == COPY_FALLBACK[0] and finish == "stop"


# ------------------------------------------------------------------------------ roles
def test_notes_are_given_as_the_users_facts():
    notes = ReplyContext(notes=("The user's name is Marcus.",))
    system = messages_for("What's my name?", "en", notes)[0].content
    assert "- The user's name is Marcus." in system and "the user's, not yours" in system
    system = messages_for("我叫什么？", "zh", ReplyContext(notes=("用户的名字是李娜。",)))[0].content
    assert "- 用户的名字是李娜。" in system and "不是你的" in system


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("My name is Marcus.", "Your name is Marcus."),
        ("I live in Lyon.", "You live in Lyon."),
        ("My name is Marcus and I live in Lyon.", "Your name is Marcus and you live in Lyon."),
        ("Of course. I'm Marcus!", "Of course. You're Marcus!"),
        ("Yes, I am Marcus.", "Yes, you are Marcus."),
        ("Your name is Marcus.", "Your name is Marcus."),  # already right
        ("I'm TalkTwin, your digital twin.", "I'm TalkTwin, your digital twin."),  # the twin itself
        ("I recommend a walk along the river in Lyon.", "I recommend a walk along the river in Lyon."),
        ("I love Lyon too!", "I love Lyon too!"),  # the twin's own taste
        ("I'm sure Lyon is lovely in spring.", "I'm sure Lyon is lovely in spring."),
    ],
)
def test_the_users_facts_spoken_as_i_are_turned_round(answer: str, expected: str):
    statements = ("The user's name is Marcus.", "The user lives in Lyon.", "Hi, my name is Marcus.")
    assert speak_to_user(answer, statements, "What's my name?", "en") == expected


def test_chinese_facts_spoken_as_i_are_turned_round():
    statements = ("用户的名字是李娜。", "用户住在杭州。", "你好，我叫李娜，我住在杭州。")
    assert speak_to_user("我叫李娜。", statements, "我叫什么名字？", "zh") == "你叫李娜。"
    assert speak_to_user("我住在杭州。", statements, "我住在哪里？", "zh") == "你住在杭州。"
    assert speak_to_user("你叫李娜。", statements, "我叫什么名字？", "zh") == "你叫李娜。"
    assert speak_to_user("是的，我是李娜。", statements, "你记得我吗？", "zh") == "是的，你是李娜。"
    assert (
        speak_to_user("我是 TalkTwin，你的数字分身。", statements, "你是谁？", "zh")
        == "我是 TalkTwin，你的数字分身。"
    )


def test_a_fact_the_question_itself_names_is_not_turned_round():
    # "Is my name Marcus?" -> "My name is Marcus" would be odd, but the fact came from the question:
    # nothing tells it apart from the twin's own sentence, so it is left alone
    assert speak_to_user("I live in Lyon.", ("The user lives in Lyon.",), "Do you know Lyon?", "en") == (
        "I live in Lyon."
    )


def test_the_model_stage_turns_the_answer_round_for_a_question_about_the_user():
    context = ReplyContext(
        history=(
            ChatMessage("user", "Hi, my name is Marcus."),
            ChatMessage("assistant", "Nice to meet you!"),
        ),
        notes=("The user's name is Marcus.",),
    )
    chat = FakeChat("My name is Marcus.", finish="length")
    text, finish, _ = run(
        respond(chat, messages_for("What's my name?", "en", context), max_tokens=96, temperature=0)
    )
    assert text == "Your name is Marcus." and finish == "length"  # the model's finish reason stands


# ------------------------------------------------------------------------------ the model stage
def test_a_fixed_answer_does_not_ask_the_model():
    chat = FakeChat()
    messages = messages_for("帮我设一个十分钟的计时器。", "zh")
    assert isinstance(messages, Prompt)
    assert run(respond(chat, messages, max_tokens=96, temperature=0.7))[:2] == (CANNOT["alarm"][1], "stop")
    assert chat.calls == []


def test_plain_messages_and_ordinary_questions_stream_straight_through():
    chat = FakeChat("Paris is the capital of France.", "Paris.", finish="length")
    plain = [ChatMessage("user", "What is the capital of France?")]
    text, finish, pieces = run(respond(chat, plain, max_tokens=96, temperature=0.7))
    assert (text, finish, pieces) == ("Paris is the capital of France.", "length", 6)
    assert (
        run(respond(chat, messages_for("What is the capital of France?"), max_tokens=9, temperature=0))[0]
        == "Paris."
    )


def test_the_pipeline_answers_an_impossible_request_without_the_model(tmp_path: Path):
    chat = FakeChat("设一个闹钟。")

    class NoContext:
        def context_for(self, conversation: str, user: str, text: str) -> ReplyContext:
            return ReplyContext()

        def record_turn(self, *args: object) -> None:
            pass

    pipeline = ReplyPipeline(
        SETTINGS,
        recognizer=NoRecognizer(),
        chat_model=chat,
        synthesizer=None,  # type: ignore[arg-type]  (a text reply speaks nothing)
        renderer=None,  # type: ignore[arg-type]
        context=NoContext(),
    )
    result = pipeline.reply(
        ReplyRequest("test:1", text="Set an alarm for 7 am tomorrow.", format="text"), tmp_path / "a"
    )
    assert result.answer == CANNOT["alarm"][0] and result.language == "en" and chat.calls == []
    result = pipeline.reply(
        ReplyRequest("test:1", text="翻译成中文：Set an alarm.", format="text"), tmp_path / "b"
    )
    assert (result.answer, result.language, len(chat.calls)) == ("设一个闹钟。", "zh", 1)  # a translation


def test_a_short_question_copied_back_is_asked_again_then_replaced():
    question = "翻译成中文：Luck is a dividend of sweat."
    chat = FakeChat("Luck is a dividend of sweat.", "运气是汗水的红利。")
    assert (
        run(respond(chat, messages_for(question, "zh"), max_tokens=96, temperature=0.7))[0]
        == "运气是汗水的红利。"
    )
    assert "不要重复我的话" in chat.calls[1][0][-1].content
    chat = FakeChat("Luck is a dividend of sweat.", "Luck is a dividend of sweat!")
    assert (
        run(respond(chat, messages_for(question, "zh"), max_tokens=96, temperature=0))[0]
        == SHORT_COPY_FALLBACK[1]
    )


def test_an_answer_that_does_not_copy_streams_on_after_the_look_ahead():
    answer = "The capital of France is Paris, a city on the Seine with about two million people living in it."
    chat = FakeChat(answer, finish="length")
    text, finish, pieces = run(
        respond(
            chat,
            messages_for("What is the capital city of the country called France?"),
            max_tokens=96,
            temperature=0,
        )
    )
    assert (text, finish, len(chat.calls)) == (answer, "length", 1)
    assert pieces > 10  # one held piece, then the words one by one as the model writes them


def test_an_answer_that_begins_by_restating_the_question_is_read_on_not_asked_again():
    """The look-ahead alone ("To make a really good cup of green") is all the question's words: the
    answer is read further before it is judged, and goes out as the model wrote it."""
    question = "How do I make a really good cup of green tea?"
    answer = "To make a really good cup of green tea, use water at about eighty degrees."
    assert is_parroting("To make a really good cup of green", question)  # what the look-ahead sees
    chat = FakeChat(answer)
    text, finish, _ = run(respond(chat, messages_for(question), max_tokens=96, temperature=0))
    assert (text, finish, len(chat.calls)) == (answer, "stop", 1)
    # a question copied back and going on copying is still asked for again
    chat = FakeChat(f"{question} {question}", answer)
    assert run(respond(chat, messages_for(question), max_tokens=96, temperature=0))[0] == answer
    assert len(chat.calls) == 2


def test_only_what_the_user_said_about_themselves_holds_an_answer_back():
    """Checking an answer against the user's statements holds it whole; earlier questions are not
    statements, so an ordinary question in a conversation streams after the look-ahead."""
    assert not about_the_user("Can you tell me a fun fact about cats?")
    assert not about_the_user("给我讲一个关于猫的小知识。") and not about_the_user("我们去哪儿玩？")
    assert about_the_user("How do I make a good cup of tea?") and about_the_user("我叫什么名字？")
    assert states_own_fact("Hi, my name is Marcus.") and states_own_fact("你好，我住在杭州。")
    assert not states_own_fact("What is the capital of France?") and not states_own_fact("我叫什么名字？")
    asked = (
        ChatMessage("user", "What is the capital of France?"),
        ChatMessage("assistant", "Paris."),
        ChatMessage("user", "Hi, my name is Marcus."),
        ChatMessage("assistant", "Nice to meet you!"),
    )
    plan = plan_answer("How do I make a good cup of tea?", "en", ReplyContext(history=asked))
    assert plan.user_statements == ("Hi, my name is Marcus.",)
    plan = plan_answer("How do I make a good cup of tea?", "en", ReplyContext(history=asked[:2]))
    assert plan.user_statements == ()
    answer = "To make a good cup of tea, boil fresh water. Then steep the leaves for three minutes."
    chat = FakeChat(answer)
    context = ReplyContext(history=asked[:2])
    messages = messages_for("How do I make a good cup of tea?", "en", context)
    text, _, pieces = run(respond(chat, messages, max_tokens=96, temperature=0))
    assert text == answer and pieces > 5  # the look-ahead, then word by word
    # a question about the user's own facts still sees every earlier message
    assert plan_answer("What's my name?", "en", ReplyContext(history=asked)).user_statements == (
        "What is the capital of France?",
        "Hi, my name is Marcus.",
    )


def test_a_question_in_the_other_language_than_the_persona_asks_for_an_answer_in_its_own():
    """A live conversation keeps one persona (its prompt stays read by the model); a Chinese question
    under the English persona gets the English system prompt and notes, and asks for Chinese."""
    shim = SimpleNamespace(settings=SETTINGS)
    context = ReplyContext(notes=("用户的名字是李雷。",))
    kept = ReplyPipeline._messages(shim, "法国的首都是哪里？", "zh", context, "en")  # type: ignore[arg-type]
    own = ReplyPipeline._messages(shim, "法国的首都是哪里？", "zh", context)  # type: ignore[arg-type]
    assert kept[0].content.startswith(SETTINGS.llm.persona_en) and "What the user told you" in kept[0].content
    assert kept[-1].content == "法国的首都是哪里？\n" + ANSWER_IN["zh"]
    assert own[0].content.startswith(SETTINGS.llm.persona_zh) and own[-1].content == "法国的首都是哪里？"
    english = ReplyPipeline._messages(shim, "What is the capital of France?", "en", context, "zh")  # type: ignore[arg-type]
    assert english[0].content.startswith(SETTINGS.llm.persona_zh)
    assert english[-1].content.endswith(ANSWER_IN["en"])


def test_stopping_a_held_answer_stops_the_model():
    closed = []

    class Endless:
        def stream(
            self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
        ) -> ChatStream:
            try:
                while True:
                    yield "word "
            finally:
                closed.append(True)

    stream = respond(Endless(), messages_for(TRANSCRIPT), max_tokens=96, temperature=0)  # type: ignore[arg-type]
    assert [next(stream) for _ in range(5)] == [""] * 5  # held: nothing to speak yet
    stream.close()  # the user cancelled
    assert closed == [True]


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("What's my name?", "en"),
        ("What is my favourite colour?", "en"),
        ("Where do I live?", "en"),
        ("我最喜欢吃什么水果？", "zh"),
        ("我叫什么名字？", "zh"),
    ],
)
def test_a_fact_about_the_user_never_told_is_not_guessed(question: str, language: str):
    plan = plan_answer(question, language, ReplyContext())
    assert plan.fixed == UNKNOWN_FACT[language == "zh"]
    told = ReplyContext(notes=("The user's name is Marcus.",))
    assert plan_answer(question, language, told).fixed is None  # with notes, the model answers


def test_questions_about_the_user_that_need_no_fact_go_to_the_model():
    for question in ("What is my purpose in life?", "Should I learn French?", "我应该学什么乐器？"):
        assert plan_answer(question, "en", ReplyContext()).fixed is None


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("Who are you?", "identity"),
        ("Are you ChatGPT?", "identity"),
        ("Who made you?", "identity"),
        ("你是谁？", "identity"),
        ("你是哪个公司开发的？", "identity"),
        ("What can you do?", "capabilities"),
        ("What kinds of things can you help me with?", "capabilities"),
        ("你能做什么？", "capabilities"),
        ("你有哪些功能？", "capabilities"),
    ],
)
def test_a_bare_question_about_the_twin_gets_the_known_answer(question: str, kind: str):
    plan = plan_answer(question, "zh", ReplyContext())
    assert (plan.fixed_kind, plan.fixed) == (kind, ABOUT_TWIN[kind][1])


def test_longer_questions_that_mention_the_twin_go_to_the_model():
    for question in (
        "What can you tell me about Paris?",
        "What can you do about my back pain?",
        "你能做什么菜？",
    ):
        assert about_twin(question, "en") is None


def test_an_answer_the_model_finished_without_a_full_stop_gets_one():
    question = "What is the capital of France?"
    assert (
        run(respond(FakeChat("Paris"), messages_for(question), max_tokens=96, temperature=0))[0] == "Paris."
    )
    assert run(
        respond(FakeChat("巴黎"), messages_for("法国的首都是哪里？", "zh"), max_tokens=96, temperature=0)
    )[0] == ("巴黎。")
    # cut at the token limit: left as it is, for the pipeline to drop the unfinished sentence
    cut = FakeChat("Paris is the capital and", finish="length")
    assert run(respond(cut, messages_for(question), max_tokens=5, temperature=0))[:2] == (
        "Paris is the capital and",
        "length",
    )


def test_a_blanket_refusal_of_an_ordinary_message_is_asked_for_once_more():
    chat = FakeChat("对不起，我无法帮助你。", "那就早点休息吧，喝杯热水。")
    assert run(respond(chat, messages_for("我今天有点累。", "zh"), max_tokens=96, temperature=0.7))[0] == (
        "那就早点休息吧，喝杯热水。"
    )
    assert len(chat.calls) == 2 and chat.calls[1][1] <= 0.3
    chat = FakeChat("I'm sorry, but I can't assist with that.", "I'm sorry, but I can't assist with that.")
    text = run(respond(chat, messages_for("I feel a bit tired today."), max_tokens=96, temperature=0.7))[0]
    assert text == "I'm sorry, but I can't assist with that." and len(chat.calls) == 2  # asked once, no loop
    assert not is_refusal("I can talk with you and answer questions, but I can't set alarms.")


def test_the_look_ahead_ends_at_the_first_sentence_and_lets_the_caller_cancel_meanwhile():
    class Stalling:
        def stream(
            self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
        ) -> ChatStream:
            yield "This first sentence arrives quickly. "
            yield from ["and ", "then ", "it ", "stalls"]
            return "stop"

    # a time limit stops reading after the next piece: the first sentence is that piece, not held back
    stream = respond(Stalling(), messages_for("Hi there, how are you today?"), max_tokens=96, temperature=0)  # type: ignore[arg-type]
    assert next(stream) == "This first sentence arrives quickly."  # its space comes with the next word
    stream.close()
    # before a first sentence is complete, each piece read gives the caller a turn (empty)
    chat = FakeChat("one two three four five six seven eight nine ten.")
    stream = respond(chat, messages_for("Count for me, please, slowly."), max_tokens=96, temperature=0)
    assert [next(stream) for _ in range(3)] == ["", "", ""]
    stream.close()


def test_a_slow_answer_is_let_through_before_the_models_time_limit():
    class Slow:
        def stream(
            self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
        ) -> ChatStream:
            words = "Diane's package has not arrived yet and she asks for a call back"
            for word in words.split(" "):
                time.sleep(0.05)
                yield word + " "
            return "stop"

    plan = plan_answer(TRANSCRIPT, "en", ReplyContext(), time_limit_s=0.5)  # released after 0.4 s
    messages = Prompt([ChatMessage("user", TRANSCRIPT)], plan)
    stream = respond(Slow(), messages, max_tokens=96, temperature=0)  # type: ignore[arg-type]
    pieces = []
    while not (piece := next(stream)):
        pieces.append(piece)
    assert 4 <= len(pieces) <= 9 and piece.startswith("Diane's package")  # held ~0.4 s, then let through
    assert run(stream)[0].endswith("call back.")  # and the rest streams on


# ------------------------------------------------------------------------------ the evaluation's checks
def test_the_evaluation_flags_the_failures_the_issue_measured_and_passes_honest_answers():
    from bench.answer_eval import check, load_items

    items = {i["id"]: i for i in load_items()}
    assert "false_claim" in check(
        items["capability-en"], "You can control your computer using voice commands.", False
    )
    assert {"language_mix", "invented"} <= set(check(items["fruit-zh"], "我的最喜欢水果是 mangoes。", False))
    assert "role_confusion" in check(items["recall-name-en"], "My name is Marcus.", False)
    assert {"parroting", "wrong_language"} <= set(
        check(items["translate-zh"], "Luck is a dividend of sweat.", False)
    )
    assert "mid_sentence" in check(items["story-moon-zh"], "月亮每天晚上都会出来，这可能是你的", False)
    assert "false_claim" in check(items["alarm-zh"], "好的，我帮你设置了一个七点的闹钟。", False)
    assert "wrong_identity" in check(items["identity-maker-zh"], "我是由OpenAI开发的。", False)
    assert "wrongly_refused" in check(items["alarm-history-en"], CANNOT["alarm"][0], True)

    assert check(items["alarm-zh"], CANNOT["alarm"][1], True) == []
    assert check(items["recall-name-zh"], "你叫李娜。", False) == []
    assert check(items["river-zh"], "中国最长的河流是长江。", False) == []
    assert (
        check(items["reminder-tip-zh"], "可以用 Google 日历记下每天的事情。", False) == []
    )  # a name, not mixing


def test_an_answer_that_restates_a_short_question_is_not_parroting():
    question = "Could you please give me one simple idea to relax after a long and very busy day at work?"
    answer = "One simple idea to relax after a long and very busy day at work is to take a short walk."
    assert not is_parroting(answer, question)
    assert is_parroting("Luck is a dividend of sweat.", "翻译成中文：Luck is a dividend of sweat.")
