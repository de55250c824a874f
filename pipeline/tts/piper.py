"""Piper (VITS in onnxruntime): the offline English voice.

Phoneme timings come from the model itself: its duration predictor's `w_ceil` tensor says how many
frames each phoneme id gets. Piper exposes it when the graph lists that tensor as an output; piper's
own `include_alignments` patch needs the `onnx` package, whose current releases want protobuf >= 6
while mediapipe pins protobuf < 5. So the one-field graph edit is done here on the protobuf wire
format (a few dozen lines, no dependency); a model that cannot be patched still speaks, with
phoneme timings spread evenly instead.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
from piper.const import BOS, EOS, PAD

from pipeline.errors import ModelMissing
from pipeline.tts.text import align_words, clamp_phonemes, prepare_text, split_words
from pipeline.types import Audio, PhonemeTiming, Speech, VoiceSettings

log = logging.getLogger(__name__)

_STRESS = "ˈˌ"
_SUFFIXES = "ːˑʰʲʷˠˤ˞"  # modify the sound before them: fold into the previous phoneme
_MARKS = {PAD, BOS, EOS}


class PiperSynthesizer:
    """Speaks with one Piper voice, loaded once and reused for every sentence."""

    name = "piper"

    def __init__(self, model_path: Path, threads: int = 0) -> None:
        """`threads`: onnxruntime intra-op threads, 0 = one per core."""
        config_path = Path(f"{model_path}.json")
        if not model_path.is_file() or not config_path.is_file():
            raise ModelMissing(name=str(model_path))
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
        self.model_path = model_path
        self.language = _language(config_dict)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        model = model_path.read_bytes()
        patched = _with_alignment_output(model)
        if patched is None:
            log.warning("piper voice %s gives no alignments; phoneme timings will be estimated", model_path)
        session = onnxruntime.InferenceSession(
            patched or model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.voice = PiperVoice(session=session, config=PiperConfig.from_dict(config_dict))
        self._id_to_phoneme = {ids[0]: ph for ph, ids in self.voice.config.phoneme_id_map.items() if ids}
        self._warned_pitch = False

    def supports(self, language: str) -> bool:
        return language.split("-")[0].lower() == self.language

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        text = prepare_text(text)
        if voice.pitch and not self._warned_pitch:
            log.debug("piper cannot change pitch; ignoring pitch=%+d Hz", voice.pitch)
            self._warned_pitch = True
        config = SynthesisConfig(
            length_scale=self.voice.config.length_scale / max(0.1, 1 + voice.rate / 100),
            volume=max(0.0, min(voice.volume / 100, 1.0)),
        )
        sr = self.voice.config.sample_rate
        chunks: list[np.ndarray] = []
        phonemes: list[PhonemeTiming] = []
        offset = 0
        for chunk in self.voice.synthesize(text, syn_config=config, include_alignments=True):
            samples = chunk.audio_float_array
            counts = chunk.phoneme_id_samples
            if counts is None or len(counts) != len(chunk.phoneme_ids):
                counts = _even_counts(len(chunk.phoneme_ids), len(samples))
            phonemes += self._timings(chunk.phoneme_ids, counts, offset, sr)
            chunks.append(samples)
            offset += len(samples)
        audio = Audio(np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32), sr)
        timed = clamp_phonemes(phonemes, audio.duration)
        words = split_words(text)
        return Speech(
            text,
            language,
            audio,
            words=align_words(words, [self._word_phonemes(w) for w in words], timed),
            phonemes=timed,
            engine=self.name,
        )

    def _word_phonemes(self, word: str) -> str:
        """One written word's phonemes, as `_timings` spells them (no stress, spaces, punctuation)."""
        chars = "".join("".join(sentence) for sentence in self.voice.phonemize(word))
        return "".join(c for c in chars if c not in _STRESS and (c.isalpha() or unicodedata.combining(c)))

    def _timings(self, ids: list[int], counts: np.ndarray, offset: int, sr: int) -> list[PhonemeTiming]:
        """IPA phoneme spans of one chunk: phoneme ids mapped back through the voice's id map."""
        phonemes: list[PhonemeTiming] = []
        stress_start: int | None = None
        extend = False  # whether a following PAD's time belongs to the last phoneme
        pos = offset
        for pid, n in zip(ids, counts, strict=True):
            start, pos = pos, pos + int(n)
            ph = self._id_to_phoneme.get(pid, "")
            if ph == PAD and extend and phonemes:
                # piper puts a PAD after every phoneme; its frames are that phoneme's tail
                last = phonemes[-1]
                phonemes[-1] = PhonemeTiming(last.phoneme, last.start, pos / sr)
                continue
            if ph in _MARKS or not ph:
                continue
            if ph in _STRESS:  # its time belongs to the sound it stresses
                stress_start = start if stress_start is None else stress_start
                extend = False
                continue
            if (ph in _SUFFIXES or unicodedata.combining(ph)) and phonemes and extend:
                last = phonemes[-1]
                phonemes[-1] = PhonemeTiming(last.phoneme + ph, last.start, pos / sr)
                continue
            if not ph.isalpha():  # space or punctuation: silence or a boundary, not a sound
                stress_start, extend = None, False
                continue
            begin = stress_start if stress_start is not None else start
            stress_start, extend = None, True
            phonemes.append(PhonemeTiming(ph, begin / sr, pos / sr))
        return phonemes


def _language(config: dict) -> str:
    """The voice's language family ("en") from its config."""
    family = config.get("language", {}).get("family") or config.get("espeak", {}).get("voice", "en")
    return str(family).split("-")[0].split("_")[0].lower()


def _even_counts(n_ids: int, n_samples: int) -> np.ndarray:
    edges = np.linspace(0, n_samples, n_ids + 1).round().astype(np.int64)
    return np.diff(edges)


# --- the graph edit: mark the duration predictor's Ceil output as a graph output -------------------
# ModelProto.graph = field 7; GraphProto.node = 1, .output = 12; NodeProto.output = 2, .op_type = 4;
# ValueInfoProto.name = 1. All are length-delimited (wire type 2).


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, key start, value start, value end) for each field of one message."""
    pos, end = start, len(data) if end is None else end
    while pos < end:
        key_start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, nxt = _varint(data, pos)
        elif wire == 1:
            nxt = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            nxt = pos + length
        elif wire == 5:
            nxt = pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, key_start, pos, nxt
        pos = nxt


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _with_alignment_output(model: bytes) -> bytes | None:
    """`model` with its single Ceil tensor added to the graph outputs; None if that is not possible."""
    try:
        _, _, key, g_start, g_end = next(f for f in _fields(model) if f[0] == 7 and f[1] == 2)
        ceil_outputs: list[bytes] = []
        outputs: list[bytes] = []
        for number, wire, _, s, e in _fields(model, g_start, g_end):
            if number == 1 and wire == 2:  # a node
                node = [(n, model[a:b]) for n, w, _, a, b in _fields(model, s, e) if w == 2]
                if (4, b"Ceil") in node:
                    ceil_outputs += [value for n, value in node if n == 2]
            elif number == 12 and wire == 2:  # a graph output
                outputs += [model[a:b] for n, _, _, a, b in _fields(model, s, e) if n == 1]
    except (StopIteration, IndexError, ValueError):
        return None
    if len(ceil_outputs) != 1:
        return None
    if ceil_outputs[0] in outputs:  # patched already
        return model
    graph = model[g_start:g_end] + _len_field(12, _len_field(1, ceil_outputs[0]))
    return model[:key] + _len_field(7, graph) + model[g_end:]
