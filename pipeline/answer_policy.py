"""How a message is put to the chat model, and what of its answer is checked before anyone hears it.

The small embedded models fail in ways a persona sentence does not fix (measured with
bench/answer_eval.py, issue 10):

- They promise what the twin cannot do: "I'll set an alarm for 7 am", a made-up forecast for
  tomorrow. Requests for alarms, reminders, timers, weather, news and live prices, calls, messages,
  device control and web browsing are recognised here and get an honest fixed answer in the user's
  language; the model is not asked at all (`cannot_do`). So do a bare question about the twin
  itself ("Are you ChatGPT?" -> "Yes, I am ChatGPT.", `about_twin`) and a question about the user's
  own name or tastes when nothing the user said is in view (the model only guessed: "苹果").
- They read a long pasted or spoken text (a phone-call transcript) back word for word, and copy
  short requests too ("翻译成中文：Luck is…" -> "Luck is…"). A long text is framed as a text to sum
  up (`user_turn`) and its whole answer held back; the first words of any other answer are held. A
  copy (`is_parroting`) is asked for once more with a stricter instruction, and a second copy is
  replaced by a short honest line.
- Asked "What's my name?", they answer as the user ("My name is Marcus.") even with the roles spelled
  out in the system prompt. The notes are given with their roles spelled out anyway (`notes_block`),
  and an answer sentence that speaks the user's own statement in the first person is turned round to
  address the user (`speak_to_user`): "Your name is Marcus."

`ReplyPipeline._messages` builds a `Prompt` (the messages plus the `AnswerPlan` they were built
from); `respond` stands in for `ChatModel.stream` at the start of the model stage and follows the
plan. Plain message lists pass through `respond` untouched.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.context import ReplyContext
from pipeline.llm.base import ChatMessage, ChatModel, ChatStream

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- requests
# Things the twin cannot do, each with the request forms that ask for it. A request is an imperative
# ("Set an alarm…", "帮我设一个闹钟") or a question about live data ("What's the weather tomorrow?");
# a question *about* the thing ("Who invented the alarm clock?", "天气预报是怎么做出来的？") is not.
_EN_ASK = r"(?:^|[.!?]\s+|\b(?:please|can you|could you|would you|will you|i want you to|i need you to)\s+)"
_EN_HOWTO = re.compile(
    r"\b(how (do|does|did|can|could|to|would)|who (invented|made)|what is an?|why)\b", re.I
)
_ZH_HOWTO = re.compile(r"(怎么|怎样|如何|为什么|是谁发明|什么是|原理|是怎么)")

_REQUESTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (English patterns, Chinese patterns)
    "alarm": (
        (
            _EN_ASK
            + r"(set|create|make|start|add|schedule|put)\b.{0,30}\b(alarms?|timers?|reminders?|countdown)\b",
            r"\bremind me\b(?! (what|of|about|who|how|why|where|which))",  # not "remind me what we said"
            r"\bwake me( up)?\b",
            r"\b(alarm|timer|reminder)\s+(for|at|in)\s+\d",
        ),
        (
            r"(设|定|订|建|开|加|弄)(置|定|好|上|一下)?(一)?(个)?.{0,12}(闹钟|闹铃|计时器|定时器|倒计时|提醒)",
            r"提醒我(?!.{0,6}(什么|说过|刚才|之前|上次|是谁|在哪))",
            r"(叫|喊)(醒)?我(起床)?",
        ),
    ),
    "weather": (
        (
            r"\b(weather|forecast|temperature)\b.{0,40}\b(today|tonight|tomorrow|now|outside|at the moment|"
            r"currently|this (week|weekend|morning|afternoon|evening))\b",
            r"\b(today|tonight|tomorrow)('s)?\b.{0,20}\b(weather|forecast|temperature)\b",
            r"\bwhat('s| is) the (weather|forecast|temperature)( like)?( (in|at) \w+( \w+){0,2})?\s*[?.!]*$",
            r"\b(will|is) it (going to )?(rain|snow|be sunny|be hot|be cold|be windy|raining|snowing)\b",
            r"\bdo i need an umbrella\b",
        ),
        (
            r"(今天|明天|后天|今晚|明早|明晚|现在|这周|周末|本周|下周|这几天|最近几天|未来几天).{0,8}"
            r"(天气|气温|温度|下雨|下雪|降温|刮风|冷不冷|热不热)",
            r"天气(怎么样|如何|好不好|咋样|怎样)",
            r"(会不会|要不要|会)下(雨|雪)",
            r"(要|需要)带伞",
        ),
    ),
    "live": (
        (
            r"\b(latest|today's|breaking|current|recent|this week's)\b.{0,20}\b(news|headlines|scores?)\b",
            r"\b(in|on) the news\b.{0,10}\b(today|now|this week)\b",
            r"\bwhat('s| is) (happening|going on) in the world\b",
            r"\b(stock|share) price\b",
            r"\b(price of|exchange rate)\b.{0,30}\b(today|now|right now|currently|at the moment)\b",
            r"\bwho won\b.{0,30}\b(last night|yesterday|today|this (week|weekend))\b",
        ),
        (
            r"(今天|最新|最近|今日|现在|实时|目前)的?.{0,6}(新闻|头条|热搜|比分|股价|汇率|金价|油价|币价)",
            r"(股价|股票价格|汇率|金价|油价)(是)?多少",
        ),
    ),
    "call": (
        (
            _EN_ASK
            + r"(call|phone|dial|ring|facetime|text|message|email|whatsapp)\s+(my|him|her|them|mom|mum|dad|"
            r"(?-i:[A-Z][a-z]+))\b",
            # "call me back" asks for a call; "call me Bob" gives a name
            r"\b(call|phone|ring|text) me (back|at|tomorrow|later|tonight|in|when|on)\b",
            _EN_ASK + r"send (a |an )?(message|text|email|e-mail|sms|mail)\b",
            r"\bmake a (phone |video )?call\b",
            r"\bgive [a-z]+ a (call|ring)\b",
        ),
        (
            r"(给|帮我给|替我给|帮我|替我).{0,10}打(个|一个)?电话",
            r"打电话给",
            r"拨打",
            r"(给|帮我给|替我给).{0,10}(发|回)(个|一个|一条|条)?(消息|短信|微信|邮件|信息)",
            r"发(个|一个|一条|条)?(消息|短信|微信|邮件|信息)给",
        ),
    ),
    "device": (
        (
            _EN_ASK + r"(turn|switch)\s+(on|off)\b",
            _EN_ASK + r"(turn|switch)\s+(the|my)\s+\w+(\s+\w+)?\s+(on|off)\b",
            _EN_ASK + r"(dim|brighten|lock|unlock|shut down|restart|reboot|mute|unmute)\b",
            _EN_ASK + r"(open|launch|start)\s+(the |my )?(app|browser|spotify|youtube|chrome|email|camera|"
            r"settings|music)\b",
            _EN_ASK + r"play (some |a |the )?(music|song|songs|playlist|radio|podcast)\b",
            _EN_ASK + r"(set|turn) the (thermostat|heating|volume|temperature)\b",
        ),
        (
            r"(帮我|请|给我|替我)?(打开|关掉|关闭|关上|开一下|调高|调低|调到|调亮|调暗|锁上|解锁)(一下)?"
            r"(客厅|卧室|厨房|家里|房间|我的)?的?(灯|空调|电视|电脑|窗帘|门|暖气|音响|风扇|音量|应用|软件|浏览器)",
            r"把.{0,10}(灯|空调|电视|电脑|窗帘|门|暖气|音响|风扇|音乐).{0,3}(打开|关掉|关闭|关上|关了|开开|调高|调低|调亮|调暗)",
            r"(帮我|请|给我)?(重启|关机)(一下)?(电脑|手机)?[。！!]?$",
            r"(帮我|请|给我)?(播放|放一首|放首|放点)",
        ),
    ),
    "browse": (
        (
            r"\b(search|look up|google|browse)\b.{0,30}\b(online|on the (web|internet)|the (web|internet))\b",
            _EN_ASK + r"(google|browse)\b",
            r"\b(open|visit|go to) (the )?(website|web ?site|url|www\.\S+|\S+\.(com|org|net))\b",
        ),
        (
            r"(上网|网上|在网上|百度|谷歌|google)(搜|查|找|看)",
            r"(帮我|请)(搜一下|搜索|上网)",
            r"打开.{0,10}网(站|页|址)",
        ),
    ),
}
_SEASON = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december|spring|"
    r"summer|autumn|fall|winter|usually|climate)\b|[一二三四五六七八九十]+月|春天|夏天|秋天|冬天|一般|通常|气候",
    re.I,
)
_ABOUT_LANGUAGE = re.compile(
    r"\b(translat\w*|what does .{1,40} mean|in (english|chinese))\b|翻译|什么意思|用英文|用中文", re.I
)
_COMPILED = {
    kind: (tuple(re.compile(p, re.I | re.M) for p in en), tuple(re.compile(p) for p in zh))
    for kind, (en, zh) in _REQUESTS.items()
}

# The honest answers, one per kind and language: what the twin cannot do, and what it can instead.
CANNOT: dict[str, tuple[str, str]] = {
    "alarm": (
        "I can't set alarms, reminders or timers; I can only talk with you here. Your phone's clock app can "
        "do that for you.",
        "我不能设置闹钟、提醒或计时器，只能在这里和你聊天。你可以用手机的时钟应用来设置。",
    ),
    "weather": (
        "I can't see the weather: I run offline on this computer, so I have no forecast. A weather app will "
        "have it.",
        "我看不到天气：我在这台电脑上离线运行，没有天气预报。你可以看看手机上的天气应用。",
    ),
    "live": (
        "I can't see the news or live prices: I run offline and only know what I learned in training and "
        "what you tell me.",
        "我看不到新闻或实时价格：我是离线运行的，只知道训练时学到的知识和你告诉我的事情。",
    ),
    "call": (
        "I can't make calls or send messages; I can only answer you here, in this chat.",
        "我不能打电话，也不能发消息，只能在这里回答你。",
    ),
    "device": (
        "I can't control devices, apps or music on your computer; I can only talk with you and answer "
        "questions.",
        "我不能控制你的设备、电脑上的应用或音乐，只能和你聊天、回答问题。",
    ),
    "browse": (
        "I can't browse the internet; I run offline. I can answer from what I know and from documents you "
        "upload.",
        "我不能上网，我是离线运行的。我可以根据我知道的知识和你上传的文档来回答。",
    ),
}


# Questions about the twin itself, asked bare ("Who are you?", "What can you do?", "你是谁？"): the
# answer is known exactly, and the 0.5B model got it wrong ("Yes, I am ChatGPT.", "由阿里云开发",
# a markdown list of writing services). A longer message that mentions them goes to the model.
_OTHER_ASSISTANT = (
    r"chatgpt|gpt\W*\d*|openai|siri|alexa|cortana|google|bard|gemini|claude|qwen|llama|bot|robot|ai|human|"
    r"real person|real"
)
_ABOUT_TWIN: dict[str, tuple[re.Pattern[str], ...]] = {
    "identity": (
        re.compile(
            "|".join(
                (
                    r"^\W*(hi|hello|hey)?\W*(so\W+)?(who|what) are you\W*$",
                    rf"^\W*are you (a |an )?({_OTHER_ASSISTANT})\W*$",
                    r"^\W*(who|which company) (made|created|built|developed|trained) you\W*$",
                    r"^\W*what('s| is) your name\W*$",
                )
            ),
            re.I,
        ),
        re.compile(
            r"^\W*(请问)?(你是谁|你是什么|你叫什么(名字)?|你的名字是什么|谁(开发|制作|创造|做|训练)(了|的)?你|"
            r"你是(由)?(哪个|哪家)公司(开发|制作|做)的|你是(chatgpt|gpt|openai|siri|通义千问|千问|文心一言|机器人|"
            r"真人|人工智能))[呢呀啊吗]?\W*$",
            re.I,
        ),
    ),
    "capabilities": (
        re.compile(
            "|".join(
                (
                    r"^\W*(so\W+|and\W+)?what (else )?(can|could) you do( for me)?\W*$",
                    r"^\W*what (kinds? of )?(things|stuff) can you (do|help( me)? with)\W*$",
                    r"^\W*what are you (able to do|capable of|good at)\W*$",
                    r"^\W*what (are )?your (features|capabilities|abilities|functions)\W*$",
                    r"^\W*how can you help( me)?\W*$",
                )
            ),
            re.I,
        ),
        re.compile(
            r"^\W*(请问)?(你(能|可以|会)(做|干|帮我做|帮我干|帮我|帮)?(些)?(什么|啥|哪些)(事|事情)?|"
            r"你(有)?(什么|哪些)(功能|本领|能力|用处))[呢呀啊吗]?\W*$"
        ),
    ),
}
ABOUT_TWIN: dict[str, tuple[str, str]] = {
    "identity": (
        "I'm TalkTwin, your digital twin: an open-source assistant made by the TalkTwin project. I run "
        "offline on your computer and speak with the photo and voice you chose.",
        "我是 TalkTwin，你的数字分身，由开源项目 TalkTwin 制作。"
        "我离线运行在你的电脑上，用你选择的头像和声音说话。",
    ),
    "capabilities": (
        "I can talk with you, answer questions, remember what you tell me in our conversation, and answer "
        "from documents you upload, with your chosen face and voice. I can't set alarms, check the weather "
        "or news, browse the internet, make calls, send messages or control your devices.",
        "我可以和你聊天、回答问题、记住你在对话里说过的话，还能根据你上传的文档回答，用你选的头像和声音说出来。"
        "我不能设闹钟、查天气或新闻、上网、打电话、发消息，也不能控制你的设备。",
    ),
}


# A message that only asks the twin to stop or wait ("Wait, stop please.", "好了，别说了"), typically
# said over a live answer: the model took "Wait, stop please." for a request it must refuse ("I'm
# sorry, but I can't assist with that."). The whole message must be made of these phrases.
_EN_HUSH_CORE = (
    r"stop( talking| it| there| now)?|that'?s (enough|all)|enough|be quiet|quiet|shut up|hush|"
    r"never ?mind|hold on|hang on|wait( a (second|sec|moment|minute))?|one (second|moment|minute)|"
    r"pause|cancel( that)?|no more"
)
_EN_HUSH_FILLER = (
    r"ok|okay|alright|all right|right|sorry|hey|no|please|thanks|thank you|just|for now|"
    r"a (second|sec|moment|minute)"
)
_EN_HUSH = re.compile(
    rf"(?:(?:{_EN_HUSH_CORE}|{_EN_HUSH_FILLER})\s*)*?(?:{_EN_HUSH_CORE})(?:\s*(?:{_EN_HUSH_CORE}|{_EN_HUSH_FILLER}))*"
)
_ZH_HUSH_CORE = (
    r"停下来|停一下|停止|停|别说了|不要说了|不用说了|别讲了|够了|安静|闭嘴|等一下|等等|稍等|打住|算了"
)
_ZH_HUSH = re.compile(
    rf"(?:好了|好|嗯|先|请|你|吧|啊|呀|一下|下)*(?:(?:{_ZH_HUSH_CORE})(?:好了|吧|啊|呀|一下|先|请)*)+"
)
HUSH = ("OK.", "好的。")
HUSH_MAX_CHARS = 40  # "Okay, that's enough for now, thank you." is 39


def hush_request(question: str) -> bool:
    """True when the whole message asks the twin to stop talking or to wait."""
    text = question.strip().lower()
    if len(text) > HUSH_MAX_CHARS:  # also keeps the patterns' backtracking bounded on long input
        return False
    latin = re.sub(r"[^\w']+", " ", text).strip()
    chinese = re.sub(r"[\W_]+", "", text)
    return bool(latin and _EN_HUSH.fullmatch(latin)) or bool(chinese and _ZH_HUSH.fullmatch(chinese))


def about_twin(question: str, language: str) -> tuple[str, str] | None:
    """(kind, fixed answer) for a bare question about who the twin is or what it can do."""
    for kind, patterns in _ABOUT_TWIN.items():
        if any(p.search(question.strip()) for p in patterns):
            return kind, ABOUT_TWIN[kind][language == "zh"]
    return None


def cannot_do(question: str, language: str) -> tuple[str, str] | None:
    """(kind, honest answer) when `question` asks for something the twin cannot do, else None.

    Both languages' patterns are tried (a Chinese user may type "Set an alarm"), and the answer is in
    `language`, the language the reply is spoken in. Questions about how such things work are left to
    the model.
    """
    text = question.strip()
    if not text or _ABOUT_LANGUAGE.search(text):
        return None  # "Translate to English: 今天天气很好" is about words, not the weather
    howto = _EN_HOWTO.search(text) or _ZH_HOWTO.search(text)
    for kind, (en, zh) in _COMPILED.items():
        if howto and kind not in ("weather", "live"):
            continue  # "How do I set an alarm on my phone?" is a question the model can answer
        if any(p.search(text) for p in en) or any(p.search(text) for p in zh):
            if (howto or _SEASON.search(text)) and kind in ("weather", "live") and not _asks_live_now(text):
                continue  # "How do forecasts work?", "What is the weather like in London in July?"
            return kind, CANNOT[kind][language == "zh"]
    return None


def _asks_live_now(text: str) -> bool:
    """ "How cold will it be tomorrow?" asks for a forecast; "How do forecasts work?" does not."""
    return bool(
        re.search(
            r"\b(today|tonight|tomorrow|now|this week)\b|今天|明天|后天|今晚|现在|这周|本周", text, re.I
        )
    )


# ---------------------------------------------------------------------------------------- copying
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _tokens(text: str) -> list[str]:
    """Words for Latin text, single characters for Chinese, lower-cased, without punctuation."""
    return [t.lower() for t in _TOKEN.findall(text)]


def _weight(tokens: Iterable[str]) -> float:
    """Length in English-word units: a Chinese character is about half a word."""
    return sum(0.5 if _CJK_CHAR.fullmatch(t) else 1.0 for t in tokens)


def copied_share(answer: str, source: str) -> float:
    """The share of the answer (by weight) inside runs copied from `source` of at least four words or
    six Chinese characters.

    An answer that restates the question ("The capital of France is Paris.") copies a few short runs;
    one that reads a transcript back copies nearly all of itself. A Chinese summary reuses many short
    terms of what it sums up ("上线时间", "测试服务器"), so its runs must be longer to count.
    """
    a, s = _tokens(answer), _tokens(source)
    n = 6 if 2 * sum(map(bool, map(_CJK_CHAR.fullmatch, a))) > len(a) else 4
    if len(a) < n or len(s) < n:
        return 0.0
    grams = {tuple(s[i : i + n]) for i in range(len(s) - n + 1)}
    copied = [False] * len(a)
    for i in range(len(a) - n + 1):
        if tuple(a[i : i + n]) in grams:
            copied[i : i + n] = [True] * n
    total = _weight(a)
    return _weight(t for t, c in zip(a, copied, strict=True) if c) / total if total else 0.0


def is_parroting(answer: str, message: str) -> bool:
    """True when the answer is largely a copy of the user's message rather than a reply to it.

    Half of the answer in copied runs (`copied_share`), and at least six words' worth, is a copy.
    Short answers that repeat a phrase of the question ("中国最长的河流是长江") stay well below.
    """
    a = _tokens(answer)
    if _weight(a) < 6:
        return False
    share = copied_share(answer, message)
    # an answer to a short question often restates it ("One simple idea to relax after a long day is
    # to…"): only a near-whole copy of a short message is parroting
    least = 0.5 if _weight(_tokens(message)) >= MONOLOGUE_WORDS else 0.8
    return share >= least and share * _weight(a) >= 6


# ---------------------------------------------------------------------------------------- roles
# The ways a person states a fact about themselves (the forms memory/facts.py remembers), at the start
# of a sentence. An answer sentence in one of these forms that carries the user's fact is the user's line.
_EN_LEAD = r"^\W*((yes|yeah|yep|sure|of course|well|ok|okay|right|indeed)\b\W*)?"  # "Yes, I am Marcus."
_EN_STATEMENT = re.compile(
    _EN_LEAD
    + r"(my name is|my name's|i am called|i'm called|i live in|i live|i'm from|i am from|i come from|"
    r"i work (as|at|for|in)|i'm an?|i am an?|i am \d|i'm \d|my birthday is|i was born|"
    r"my favou?rite \w+ is|i (really )?(like|love|enjoy|hate|dislike|don't like|do not like)|"
    r"i'm allergic|i am allergic)\b",
    re.I,
)
# "I'm Marcus", when Marcus is the user's name
_EN_I_AM = re.compile(_EN_LEAD + r"(i'm|i am)\s+([\w'-]+)", re.I)
_ZH_STATEMENT = re.compile(
    r"^\W*((是的|是啊|对|对的|嗯|好的|当然)\W*)?"
    r"我(叫|的名字(是|叫)|是|住在|住|在.{0,8}(工作|上班|住)|来自|今年|的生日|(很|最|特别|非常)?(喜欢|爱吃|爱喝|爱)|"
    r"不喜欢|讨厌|对.{0,8}过敏|最喜欢的)"
)
_SHARED = re.compile(r"\b(too|also|as well)\b|也|同样")  # "I like sushi too!" is the twin's own taste
_EN_SECOND = re.compile(r"\b(you|your|you're|yours)\b", re.I)
_EN_SWAP = [
    (r"\bI am\b", "you are"),
    (r"\bI'm\b", "you're"),
    (r"\bI was\b", "you were"),
    (r"\bI've\b", "you've"),
    (r"\bI'd\b", "you'd"),
    (r"\bI'll\b", "you'll"),
    (r"\bI\b", "you"),
    (r"\bmy\b", "your"),
    (r"\bmine\b", "yours"),
    (r"\bmyself\b", "yourself"),
    (r"\bme\b", "you"),
]
_STOP = frozenset(
    re.findall(
        r"\S+",
        "the a an is am are was were be to of in on at and or my your you i me it its that this with for "
        "from as do does did have has had not no so but user user's name lives live like likes",
    )
)


def _facts_of(statements: Sequence[str]) -> set[str]:
    """Words (English) and character pairs (Chinese) that carry what the user said about themselves."""
    out: set[str] = set()
    for s in statements:
        out |= {t for t in _tokens(s) if not _CJK_CHAR.fullmatch(t) and t not in _STOP and len(t) > 1}
        for run in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+", s):
            out |= {run[i : i + 2] for i in range(len(run) - 1)}
    return {f for f in out if not re.search(r"[我你他她用户的是叫在住]", f)}


def speak_to_user(answer: str, statements: Sequence[str], question: str, language: str) -> str:
    """The answer with every sentence that speaks the user's own facts as "I" turned round to "you".

    A sentence is turned round when it states a fact in the first person ("My name is…", "I live
    in…", "我叫…", "我住在…"), does not already address the user, and carries one of the user's
    facts (a name, a city) that the question itself did not contain: "My name is Marcus." -> "Your
    name is Marcus."; "我叫李娜。" -> "你叫李娜。". The twin's own first-person sentences ("I'm
    TalkTwin.", "I recommend the sushi.", "I like Lyon too!") stay as they are.
    """
    facts = _facts_of(statements) - _facts_of([question])
    if not facts:
        return answer
    # sentences and the spaces between them, so the answer keeps its spacing
    parts = re.split(r"((?<=[.!?。！？…])\s*)", answer)
    return "".join(
        _turn_round(p) if i % 2 == 0 and _speaks_as_user(p, facts) else p for i, p in enumerate(parts)
    )


def _speaks_as_user(sentence: str, facts: set[str]) -> bool:
    if _SHARED.search(sentence):
        return False
    zh = _ZH_STATEMENT.match(sentence)
    if zh:
        clause = re.split(r"[，,。！？!?；;]", sentence[zh.end(1) if zh.group(1) else 0 :])[0]
        return "你" not in clause and any(f in clause for f in facts)
    if _EN_SECOND.search(sentence):
        return False
    if _EN_STATEMENT.match(sentence):
        return any(f in set(_tokens(sentence)) for f in facts)
    i_am = _EN_I_AM.match(sentence)
    return i_am is not None and i_am.group(4).lower() in facts


def _turn_round(sentence: str) -> str:
    if _CJK_CHAR.search(sentence):
        return sentence.replace("我们", "\0").replace("我", "你").replace("\0", "我们")
    out = sentence
    for pattern, repl in _EN_SWAP:
        out = re.sub(pattern, repl, out, flags=re.I)
    return out[:1].upper() + out[1:] if out else out


# Questions about the user's own facts: with nothing the user said in view, only a guess could answer.
_ASKS_OWN_FACT = (
    re.compile(
        r"\bmy (name|favou?rite \w+|age|birthday|job|hometown|home town|address|wife's name|husband's name|"
        r"dog's name|cat's name)\b.{0,10}\?|\b(what|who|where|when)\b.{0,20}\bmy (name|favou?rite \w+|age|"
        r"birthday|job|hometown|address)\b|\bwhere do i (live|work|come from)\b|\bhow old am i\b|"
        r"\bwho am i\b|\bwhat do i (like|love|do for (a )?living)\b",
        re.I,
    ),
    re.compile(
        r"我(叫什么|的名字|最喜欢|喜欢(吃|喝|做|玩)?什么|住(在)?哪|多大|几岁|的生日|是做什么|做什么工作|在哪(里|儿)?(工作|上班)|"
        r"是谁|来自哪)"
    ),
)
UNKNOWN_FACT = (
    "You haven't told me that yet. Tell me, and I'll remember it.",
    "你还没告诉过我呢。告诉我吧，我会记住的。",
)


def asks_own_fact(question: str) -> bool:
    """ "What's my name?", "Where do I live?", "我最喜欢吃什么水果？": a fact only the user can give."""
    return any(p.search(question) for p in _ASKS_OWN_FACT)


# "me" / "我" as who a request is for ("tell me a joke", "给我讲个故事") says nothing about the user
_FOR_ME_ZH = re.compile(r"我们|(给|帮|告诉|跟|和|教|让|陪|对|为)我")


def about_the_user(question: str) -> bool:
    """A question about the user themselves: "What's my name?", "Where do I live?", "我叫什么？"."""
    return bool(re.search(r"\b(my|i|mine|i'm)\b", question, re.I) or "我" in _FOR_ME_ZH.sub("", question))


_ASKING = re.compile(r"[?？]\s*$|什么|哪|谁|吗|几|多少|怎么")


def states_own_fact(message: str) -> bool:
    """A message in which the user says something about themselves ("Hi, my name is Marcus.",
    "我住在杭州。"), in the forms memory/facts.py remembers, at the start of one of its sentences."""
    sentences = re.split(r"(?<=[.!?。！？…,，])\s*", message)
    for sentence in sentences:
        if _ASKING.search(sentence):
            continue  # "我叫什么名字？" asks, it does not tell
        lead = re.sub(r"^\W*(hi|hello|hey|你好|嗨)\b\W*", "", sentence, flags=re.I)
        if _EN_STATEMENT.match(lead) or _EN_I_AM.match(lead) or _ZH_STATEMENT.match(lead):
            return True
    return False


# ---------------------------------------------------------------------------------------- prompt
MONOLOGUE_WORDS = 40  # a message this long (in English-word units) is a text to respond to


@dataclass(frozen=True)
class AnswerPlan:
    """What `respond` does for one message, decided before the model is asked."""

    question: str
    language: str
    fixed: str | None = None  # an honest answer without the model (a request the twin cannot do…)
    fixed_kind: str = ""
    monologue: bool = False  # a long pasted or spoken text: framed, the answer held and checked for copying
    # What the user said about themselves (remembered notes, their earlier turns), when the question is
    # about them: the answer is held and turned round where it speaks these as "I".
    user_statements: tuple[str, ...] = ()
    # Longest an answer is held for checking: what there is by then is let through unchecked, well
    # before the pipeline's own limit for the model (past which it speaks only what it was given).
    hold_limit_s: float = 48.0


class Prompt(list[ChatMessage]):
    """The messages for one answer, with the plan they were built from (a list, so any ChatModel takes
    it as it is)."""

    def __init__(self, messages: Iterable[ChatMessage], plan: AnswerPlan) -> None:
        super().__init__(messages)
        self.plan = plan


def plan_answer(
    question: str, language: str, context: ReplyContext, *, time_limit_s: float = 60.0
) -> AnswerPlan:
    """What to do for `question`: a fixed answer (a request the twin cannot do, or a fact about the
    user it was never told), a framed long text, or the model's answer checked against what the user
    said about themselves. `time_limit_s` is how long the pipeline lets the model write."""
    monologue = _weight(_tokens(question)) >= MONOLOGUE_WORDS
    if hush_request(question):
        return AnswerPlan(question, language, fixed=HUSH[language == "zh"], fixed_kind="stop")
    # a long text that mentions a call or a reminder in passing is a text to respond to, not an order
    fixed = None if monologue else (cannot_do(question, language) or about_twin(question, language))
    if fixed is not None:
        return AnswerPlan(question, language, fixed=fixed[1], fixed_kind=fixed[0])
    statements: tuple[str, ...] = ()
    if about_the_user(question):
        said = tuple(m.content for m in context.history if m.role == "user")
        own_fact = asks_own_fact(question)
        if not (context.notes or said) and not context.knowledge and own_fact:
            # nothing the user said is in view: the model would only guess ("苹果", "I like blue.")
            return AnswerPlan(
                question, language, fixed=UNKNOWN_FACT[language == "zh"], fixed_kind="unknown fact"
            )
        # Checking an answer against these holds it back whole: for a question that only mentions
        # the user ("How do I make tea?"), only what they said about themselves counts, not every
        # earlier question (which held every answer of a conversation until it was complete).
        statements = (*context.notes, *(said if own_fact else filter(states_own_fact, said)))
    return AnswerPlan(
        question, language, monologue=monologue, user_statements=statements, hold_limit_s=0.8 * time_limit_s
    )


def notes_block(notes: Sequence[str], language: str) -> str:
    """The remembered notes for the system prompt, with whose they are spelled out."""
    if language == "zh":
        head = (
            "用户告诉过你的关于他自己的事（这些是用户的信息，不是你的。提到时称用户为“你”，比如“你叫……”）："
        )
    else:
        head = (
            "What the user told you about themselves (these facts are the user's, not yours; when you use "
            'them, speak to the user as "you", e.g. "Your name is …"):'
        )
    return "\n\n" + head + "\n" + "\n".join(f"- {n}" for n in notes)


# After a question in the other language than the system prompt's (a live conversation keeps one
# persona): the 1.5B then answers in the question's language, as briefly. Kept short: every such
# question reads it anew (7 and 6 tokens; the earlier wording, 15 and 13, gave the same answers in
# the right language to the 13 + 13 live bench questions, short and long).
ANSWER_IN = {
    "zh": "（用中文简短回答）",
    "en": "(Answer briefly in English.)",
}


def user_turn(plan: AnswerPlan, *, strict: bool = False) -> str:
    """The user's message as the model sees it: a long one is framed as a text to sum up.

    Measured on the six transcripts of bench/data/answer_eval.jsonl, three temperatures each, with
    the 0.5B model: a neutral "Here is a long text: … say what it is about", the instruction after
    the text, gave 1 bad answer of 18; "sum up this message" before it, 16; "a message from me",
    14. `strict` is the second try after a copy: a tighter word limit (4 of 18 bad alone).
    A short message gets a reminder to answer in its own words when its answer was copied or refused.
    """
    text, zh = plan.question, plan.language == "zh"
    if not plan.monologue:
        if not strict:
            return text
        return (
            f"{text}\n（请用你自己的话简短地回答我，不要重复我的话。）"
            if zh
            else (f"{text}\n(Answer me briefly in your own words; don't repeat my message.)")
        )
    if zh:
        if strict:
            return (
                f"下面是一段很长的文字：\n“{text}”\n"
                "请用不超过三十个字，用你自己的话说出它讲了什么，不要引用原文。"
            )
        return (
            f"下面是一段很长的文字：\n“{text}”\n"
            "不要复述或引用原文。请用你自己的话，用一两句话说出这段文字讲了什么。"
        )
    if strict:
        return (
            f'Here is a long text:\n"{text}"\nIn at most twenty words of your own, say what it is about. '
            "Do not quote it."
        )
    return (
        f'Here is a long text:\n"{text}"\nDo not repeat or quote it. In one or two sentences of your own '
        "words, say what this text is about."
    )


# ---------------------------------------------------------------------------------------- answering
COPY_FALLBACK = (
    "That's a long message, and I'd rather not just read it back to you. What would you like me to do "
    "with it?",
    "这段话很长，我不想只是把它念一遍给你听。你希望我怎么帮你处理它？",
)
SHORT_COPY_FALLBACK = ("Sorry, I don't have a good answer to that.", "抱歉，这个问题我答不好。")
# How much of an ordinary answer is held to see whether it copies the question or refuses, at most:
# about a first sentence, which the sentence splitter downstream would wait for anyway.
LOOK_AHEAD_WORDS = 8
_REFUSAL = (
    re.compile(
        r"^\W*((i'm |i am )?sorry|i apologi[sz]e)?\W*(but )?(i can't|i cannot|i'm unable to|i am unable to|"
        r"i'm not able to) (assist|help)\b",
        re.I,
    ),
    re.compile(r"^\W*(对不起|抱歉|很抱歉)?\W*(但是)?我(无法|不能|没法|没办法)(帮助|帮|协助|回答)(你|您)?"),
)


def is_refusal(answer: str) -> bool:
    """A blanket refusal ("I'm sorry, but I can't assist with that.", "对不起，我无法帮助你。"), which the
    models sometimes give to ordinary messages ("我今天有点累。"). Requests the twin cannot do never
    reach the model, so a refusal from it is a bad sample."""
    return any(p.search(answer) for p in _REFUSAL)


def respond(
    chat_model: ChatModel, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
) -> ChatStream:
    """`chat_model.stream(messages, …)` with the plan of a `Prompt` applied.

    Pieces are yielded as `ChatModel.stream` yields them and the finish reason is returned. An answer
    is held back: wholly for a long text or a question about the user (both are short answers), for
    its first sentence or `LOOK_AHEAD_WORDS` words otherwise, and never past the plan's
    `hold_limit_s`. While held, empty pieces are yielded so the caller can still cancel between
    tokens. A copied or refused answer is
    asked for once more; a second copy is replaced by an honest line. An answer the model finished
    without a closing mark ("Paris") gets one, so its subtitles and the stored turn read as a sentence.
    """
    plan: AnswerPlan | None = getattr(messages, "plan", None)
    if plan is None:
        return (yield from chat_model.stream(messages, max_tokens=max_tokens, temperature=temperature))
    if plan.fixed is not None:
        log.info("answer policy: fixed answer (%s), the model was not asked", plan.fixed_kind)
        yield plan.fixed
        return "stop"
    answer = _planned(chat_model, messages, plan, max_tokens=max_tokens, temperature=temperature)
    return (yield from _closed(answer, plan.language))


_END_MARKS = tuple(".!?。！？…\"'”’)）」』")


def _closed(stream: ChatStream, language: str) -> ChatStream:
    """`stream`, with a full stop after an answer the model ended (finish "stop") without one.

    Trailing spaces of a piece wait for the next one, so the mark follows the last word directly.
    """
    last, spaces = "", ""
    try:
        while True:
            try:
                piece = next(stream)
            except StopIteration as done:
                if done.value == "stop" and last and not last.endswith(_END_MARKS):
                    yield "。" if language == "zh" else "."
                elif spaces:
                    yield spaces
                return done.value
            body = piece.rstrip()
            if not body:
                spaces += piece
                yield ""  # still a turn for the caller
                continue
            yield spaces + body
            last, spaces = body, piece[len(body) :]
    finally:
        stream.close()


def _planned(
    chat_model: ChatModel,
    messages: Sequence[ChatMessage],
    plan: AnswerPlan,
    *,
    max_tokens: int,
    temperature: float,
) -> ChatStream:
    """The model's answer with the plan's checks: held, judged, asked once more when it copied the
    message or refused an ordinary one."""
    release_at = time.monotonic() + plan.hold_limit_s
    stream = chat_model.stream(messages, max_tokens=max_tokens, temperature=temperature)
    hold_all = plan.monologue or bool(plan.user_statements)
    retry: ChatStream | None = None
    try:
        answer, finish = yield from _held(stream, None if hold_all else LOOK_AHEAD_WORDS, release_at)
        if finish is _MORE and is_parroting(answer, plan.question):
            # an answer often begins by restating the question ("To make a good cup of tea, start…"):
            # read on before calling it a copy (a retry costs the user a second answer's wait)
            more, finish = yield from _held(stream, LOOK_AHEAD_WORDS, release_at)
            answer += more
        copied, refused = is_parroting(answer, plan.question), is_refusal(answer)
        if (copied or refused) and time.monotonic() < release_at:
            stream.close()
            log.info(
                "answer policy: the answer %s; asking once more",
                "copied the message" if copied else "refused",
            )
            again = [*messages[:-1], ChatMessage("user", user_turn(plan, strict=True))]
            stream = retry = chat_model.stream(
                again, max_tokens=max_tokens, temperature=min(temperature, 0.3)
            )
            answer, finish = yield from _held(retry, None, release_at)
            copied = is_parroting(answer, plan.question)
        if copied:
            log.info("answer policy: copied again; answering with a fixed line")
            fallback = COPY_FALLBACK if plan.monologue else SHORT_COPY_FALLBACK
            answer, finish = fallback[plan.language == "zh"], "stop"
        if plan.user_statements:
            turned = speak_to_user(answer, plan.user_statements, plan.question, plan.language)
            if turned != answer:
                log.info("answer policy: turned the user's facts round to address the user")
                answer = turned
        if answer:
            yield answer
        if finish is _MORE:  # only the look-ahead (or what came in time) was held: the rest streams on
            return (yield from stream)
        return finish
    finally:  # also when the caller stops early (cancel, time limit): no model keeps writing
        stream.close()
        if retry is not None:
            retry.close()


_MORE = object()  # _held stopped early: the stream goes on


def _held(
    stream: ChatStream, words: float | None, release_at: float
) -> Generator[str, None, tuple[str, Any]]:
    """Read `stream` to its end, or (with `words`) until that many English-word units of it are read
    or its first sentence of four or more is complete, or until `release_at` (monotonic time);
    returns (text, finish reason), the reason being `_MORE` when it stopped early and the stream
    goes on.

    An empty piece is yielded per piece read, so the caller can cancel or time out meanwhile; the
    release comes before the caller's time limit, so a slow model's answer is not lost in the hold.
    """
    pieces: list[str] = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            return "".join(pieces), done.value
        text = "".join(pieces)
        if time.monotonic() >= release_at:
            return text, _MORE
        if words is not None:
            weight = _weight(_tokens(text))
            if weight >= words or (weight >= 4 and _SENTENCE_END.search(text)):
                return text, _MORE
        yield ""


_SENTENCE_END = re.compile(r"[.!?。！？…](\s|$)|[。！？]")
