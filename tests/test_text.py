import re

import pytest

from pipeline.text import SentenceSplitter, clean_for_speech, detect_language, is_phrase, split_sentences


def test_detect_language():
    assert detect_language("What is the weather like today?") == "en"
    assert detect_language("今天天气怎么样？") == "zh"
    assert detect_language("我喜欢 Python 编程") == "zh"
    assert detect_language("12345", default="zh") == "zh"


@pytest.mark.parametrize(
    "text",
    [
        "翻译成中文：Luck is a dividend of sweat.",  # the seed's example, a Chinese instruction and its text
        "把这句话翻译成中文: The early bird catches the worm.",
        "Luck is a dividend of sweat 是什么意思？",  # the instruction after the text
        "请把 The early bird catches the worm 翻译成中文",  # ... or around it
        "这个 function 的 return value 是什么",  # Chinese grammar, English terms
        "我觉得 machine learning 很 interesting",
        "我昨天看了 The Lord of the Rings",
        "总结一下：Hello, this is Diane from New Jersey, I am calling about the invoice we sent last week.",
    ],
)
def test_a_chinese_request_around_latin_text_is_chinese(text: str):
    assert detect_language(text) == "zh"


@pytest.mark.parametrize(
    "text",
    [
        "What does 你好 mean?",  # a word or two of Chinese in an English sentence
        "My favourite dish is 麻婆豆腐.",
        "I live in 上海浦东新区",
        "I love 北京 and 上海",
        "How do you say thank you in Chinese? Is it 谢谢?",
        "Translate to English: 今天天气很好",  # an English instruction about Chinese text
        "李明：Hello everyone, welcome to the weekly meeting.",  # a speaker's name, not an instruction
    ],
)
def test_english_with_a_little_chinese_stays_english(text: str):
    assert detect_language(text) == "en"


def test_a_colon_lead_that_is_not_about_language_does_not_decide():
    assert detect_language("Note: 我明天要去北京开会，帮我想想要带什么") == "zh"
    assert detect_language("PS: 这个周末有空吗？") == "zh"


def test_english_sentences_stream_out_as_soon_as_complete():
    splitter = SentenceSplitter()
    out = []
    for piece in ["Paris is the capital", " of France. It is", " famous for art", ". Thanks!"]:
        out += splitter.feed(piece)
    # "It is famous for art." is only known to be complete once the next piece starts
    assert out == ["Paris is the capital of France.", "It is famous for art."]
    assert splitter.flush() == ["Thanks!"]


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (  # the first clause goes at once, the rest by sentence
            ["To make a good", " cup of tea,", " start with fresh water,", " then steep it. Enjoy", " it!"],
            ["To make a good cup of tea,", "start with fresh water, then steep it.", "Enjoy it!"],
        ),
        (
            ["Sure, Paris is", " the capital of France."],
            ["Sure, Paris is the capital of France."],
        ),  # too short
        (
            ["The moon is 384,400 km", " away: far."],
            ["The moon is 384,400 km away:", "far."],
        ),  # no space: a number
        (["泡一杯好茶，", "先用新鲜的水，", "再放茶叶。"], ["泡一杯好茶，", "先用新鲜的水，再放茶叶。"]),
    ],
)
def test_a_live_answer_may_start_with_its_first_clause(pieces: list[str], expected: list[str]):
    splitter = SentenceSplitter(first_clause_chars=10)
    out = [sentence for piece in pieces for sentence in splitter.feed(piece)] + splitter.flush()
    assert out == expected
    # without the option, whole sentences only
    assert "".join(SentenceSplitter().feed("To make a good cup of tea, start")) == ""


def _tokens(text: str) -> list[str]:
    """`text` as a model streams it: each word with the space before it."""
    return re.findall(r"\s*\S+", text)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "The sky is blue because of the scattering of light.",
            ["The sky is blue", "because of the scattering of light."],
        ),
        (
            "The best way to learn to swim is by taking lessons. It is fun.",
            ["The best way to learn to swim", "is by taking lessons.", "It is fun."],
        ),
        ("Cats are known for their curious nature.", ["Cats are known", "for their curious nature."]),
        ("The capital of France is Paris.", ["The capital of France", "is Paris."]),
        # fewer than 3 words before the word, or only "of", "to", "in": no phrase
        ("Paris is the capital of France.", ["Paris is the capital of France."]),
        ("Spiders have eight legs in total.", ["Spiders have eight legs in total."]),
        # a mark first: the clause, as before
        ("To make a good cup of tea, start with water.", ["To make a good cup of tea,", "start with water."]),
        # Chinese keeps its clause marks
        ("天空是蓝色的因为光被散射了。", ["天空是蓝色的因为光被散射了。"]),
    ],
)
def test_a_live_answer_may_start_with_a_phrase(answer: str, expected: list[str]):
    splitter = SentenceSplitter(first_clause_chars=10, first_phrase_words=3)
    out = [sentence for piece in _tokens(answer) for sentence in splitter.feed(piece)] + splitter.flush()
    assert out == expected
    # only the first piece may be a phrase; without the option, none is
    assert not any(is_phrase(piece) for piece in out[1:])
    plain = SentenceSplitter(first_clause_chars=10)
    assert not any(
        is_phrase(p) for p in [s for piece in _tokens(answer) for s in plain.feed(piece)] + plain.flush()
    )


def test_a_word_still_being_written_is_not_taken_for_a_phrase_starter():
    splitter = SentenceSplitter(first_clause_chars=10, first_phrase_words=3)
    assert splitter.feed("The big green is") == []  # "is", or the start of "island"?
    assert splitter.feed("land has birds") == []
    assert splitter.feed(" and") == []  # not yet: "and" or "android"?
    assert splitter.feed(" trees.") == ["The big green island has birds"]
    assert splitter.flush() == ["and trees."]


def test_chinese_sentences_split_on_full_width_marks():
    assert split_sentences("北京有很多好玩的地方，比如故宫。长城也很值得一去！你想去哪里？") == [
        "北京有很多好玩的地方，比如故宫。",
        "长城也很值得一去！",
        "你想去哪里？",
    ]


def test_abbreviations_and_decimals_do_not_split():
    assert split_sentences("Pi is about 3.14 and e.g. tau is 6.28 today. Nice.") == [
        "Pi is about 3.14 and e.g. tau is 6.28 today.",
        "Nice.",
    ]


def test_short_fragments_join_the_next_sentence():
    assert split_sentences("OK. I can help you with that today.") == ["OK. I can help you with that today."]


def test_clean_for_speech_drops_markdown_and_emoji():
    assert (
        clean_for_speech("**Sure!** Here:\n1. Breathe deeply 😊\n- Walk") == "Sure! Here: Breathe deeply Walk"
    )
