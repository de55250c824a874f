from pipeline.text import SentenceSplitter, clean_for_speech, detect_language, split_sentences


def test_detect_language():
    assert detect_language("What is the weather like today?") == "en"
    assert detect_language("今天天气怎么样？") == "zh"
    assert detect_language("我喜欢 Python 编程") == "zh"
    assert detect_language("12345", default="zh") == "zh"


def test_english_sentences_stream_out_as_soon_as_complete():
    splitter = SentenceSplitter()
    out = []
    for piece in ["Paris is the capital", " of France. It is", " famous for art", ". Thanks!"]:
        out += splitter.feed(piece)
    # "It is famous for art." is only known to be complete once the next piece starts
    assert out == ["Paris is the capital of France.", "It is famous for art."]
    assert splitter.flush() == ["Thanks!"]


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
