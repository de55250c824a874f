"""espeak-ng through ctypes: the offline voice for every language (Chinese included).

The library and its data come from the espeakng-loader wheel, so no system package is needed. One
synthesis pass gives the PCM plus phoneme events (in IPA, with the PHONEME_IPA init flag) and word
events, each with its sample position, so timings line up with the audio exactly.

This build reads Chinese characters directly with the `cmn` voice (its cmn_dict holds the hanzi
word list). That was checked against a pinyin route (pypinyin -> "ni3 hao3"): both give the same
phonemes for ordinary sentences, and the hanzi route reads polyphones better (很长 -> chang2, where
pypinyin says zhang3), so text is passed as written.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from pipeline.tts.text import WORD_PATTERN, clamp_phonemes, drop_stress, prepare_text
from pipeline.types import Audio, PhonemeTiming, Speech, VoiceSettings, WordTiming

log = logging.getLogger(__name__)

# espeak_AUDIO_OUTPUT, init options, synth flags (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# espeak_EVENT_TYPE
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_MARK, _EV_PLAY, _EV_END, _EV_MSG_TERMINATED = range(7)
_EV_PHONEME = 7
# espeak_PARAMETER
_RATE, _VOLUME, _PITCH = 1, 2, 3

DEFAULT_WPM = 175
DEFAULT_PITCH = 50
# espeak's cmn phoneme table has no IPA for some sounds and prints its own mnemonics instead.
_CMN_IPA = {
    "s.": "ʂ",
    "z.": "ʐ",
    "ts.": "tʂ",
    "ts.h": "tʂʰ",
    "tsh": "tsʰ",
    "tɕh": "tɕʰ",
    "ph": "pʰ",
    "th": "tʰ",
    "kh": "kʰ",
    "i.": "ɨ",
    "i[": "ɨ",
}


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class _Pass:
    """What one espeak_Synth call produced: PCM chunks and (kind, sample, value) events."""

    pcm: list[np.ndarray] = field(default_factory=list)
    events: list[tuple[int, int, str | int]] = field(default_factory=list)


class _Library:
    """The process-wide libespeak-ng: initialised once, used under a lock (it is not thread-safe)."""

    _instance: _Library | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data at {data.decode()}")
        self.lock = threading.Lock()
        self._pass = _Pass()
        self._callback = _Callback(self._on_synth)  # kept referenced: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._known_voices: dict[str, bool] = {}

    @classmethod
    def get(cls) -> _Library:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_synth(self, wav: ctypes._Pointer, n: int, events: ctypes._Pointer) -> int:
        if wav and n > 0:
            self._pass.pcm.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while (ev := events[i]).type != _EV_LIST_TERMINATED:
            if ev.type == _EV_PHONEME:
                self._pass.events.append((_EV_PHONEME, ev.sample, ev.id.string.decode("utf-8", "replace")))
            elif ev.type == _EV_WORD:
                self._pass.events.append((_EV_WORD, ev.sample, ev.text_position))
            elif ev.type in (_EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED):
                self._pass.events.append((ev.type, ev.sample, ""))
            i += 1
        return 0  # 0 = go on synthesising

    def has_voice(self, name: str) -> bool:
        with self.lock:
            if name not in self._known_voices:
                self._known_voices[name] = self.lib.espeak_SetVoiceByName(name.encode()) == 0
            return self._known_voices[name]

    def synth(self, text: str, voice: str, wpm: int, volume: int, pitch: int) -> tuple[np.ndarray, _Pass]:
        """int16 PCM and the events for `text`, spoken by `voice` with the given parameters."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(_RATE, wpm, 0)
            self.lib.espeak_SetParameter(_VOLUME, volume, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._pass = _Pass()
            data = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            done, self._pass = self._pass, _Pass()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        pcm = np.concatenate(done.pcm) if done.pcm else np.zeros(0, np.int16)
        return pcm, done


class EspeakSynthesizer:
    """Speaks any language espeak-ng knows; phoneme and word timings come from its own events."""

    name = "espeak"

    def __init__(self, voices: dict[str, str] | None = None) -> None:
        """`voices` maps a language ("en", "zh") to an espeak voice; others use the code itself."""
        self.voices = {"en": "en-us", "zh": "cmn", **(voices or {})}
        self._lib = _Library.get()

    def voice_for(self, language: str, voice: VoiceSettings | None = None) -> str:
        """The requested voice if espeak has it (it may name an edge voice), else the language's."""
        if voice is not None and voice.voice and self._lib.has_voice(voice.voice):
            return voice.voice
        return self.voices.get(language, language)

    def supports(self, language: str) -> bool:
        return self._lib.has_voice(self.voice_for(language))

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        text = prepare_text(text)
        wpm = round(DEFAULT_WPM * (1 + voice.rate / 100))
        pcm, done = self._lib.synth(
            text,
            self.voice_for(language, voice),
            wpm=max(80, min(wpm, 450)),
            volume=max(0, min(round(voice.volume), 200)),
            pitch=max(0, min(round(DEFAULT_PITCH + voice.pitch / 2), 100)),
        )
        sr = self._lib.sample_rate
        audio = Audio((pcm.astype(np.float32) / 32768.0).clip(-1.0, 1.0), sr)
        phonemes, words = _timings(text, done.events, sr, audio.duration)
        return Speech(text, language, audio, words=words, phonemes=phonemes, engine=self.name)


def _timings(
    text: str, events: list[tuple[int, int, str | int]], sr: int, duration: float
) -> tuple[tuple[PhonemeTiming, ...], tuple[WordTiming, ...]]:
    """Phoneme spans run to the next event of any kind (pauses are empty phoneme events)."""
    phonemes: list[PhonemeTiming] = []
    for i, (kind, sample, value) in enumerate(events):
        if kind != _EV_PHONEME or not value:
            continue
        end = next((s for k, s, _ in events[i + 1 :] if k != _EV_WORD and s > sample), round(duration * sr))
        ipa = drop_stress(str(value))
        ipa = _CMN_IPA.get(ipa, ipa)
        # leftover mnemonic marks ("o-" in cmn) are not IPA
        ipa = "".join(c for c in ipa if c.isalpha() or not c.isascii())
        phonemes.append(PhonemeTiming(ipa, sample / sr, end / sr))
    clamped = clamp_phonemes(phonemes, duration)

    # Word events point into the text; snap them to the input's words so the words' text is what was
    # written ("42" is one word although espeak reads two, and French liaison can skip events).
    tokens = list(WORD_PATTERN.finditer(text))
    starts: list[tuple[float, int]] = []  # (seconds, index of the first token of the word)
    for kind, sample, pos in events:
        if kind != _EV_WORD:
            continue
        k = next((i for i, t in enumerate(tokens) if t.end() > int(pos) - 1), None)
        if k is not None and (not starts or k > starts[-1][1]):
            starts.append((sample / sr, k))
    if starts:
        starts[0] = (starts[0][0], 0)  # tokens before the first event belong to the first word
    words: list[WordTiming] = []
    for j, (start, k) in enumerate(starts):
        next_start, next_k = starts[j + 1] if j + 1 < len(starts) else (duration, len(tokens))
        inside = [p.end for p in clamped if start <= p.start < next_start]
        end = min(max(inside), next_start) if inside else next_start
        words.append(WordTiming(text[tokens[k].start() : tokens[next_k - 1].end()], start, max(end, start)))
    return clamped, tuple(words)
