"""Burned-in subtitles, drawn onto the frames with a font that covers Chinese and English.

We draw them ourselves instead of using ffmpeg's `subtitles` filter: the static ffmpeg we ship has
no libass, and we already hold every frame on its way to the encoder. Each cue is drawn once and
alpha-blended onto the frames it covers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.types import Speech

_NOTO_SC_INDEX = 2  # in NotoSansCJK-Regular.ttc: 0 JP, 1 KR, 2 SC (simplified Chinese), 3 TC, 4 HK


@dataclass(frozen=True)
class Cue:
    text: str
    start: float
    end: float


def default_font_path() -> Path:
    return Path(str(resources.files("noto_cjk_sans_otc").joinpath("NotoSansCJK-Regular.ttc")))


def cues_for(speech: Speech, offset: float, max_chars: int) -> list[Cue]:
    """Cut a sentence into cues of at most about `max_chars`, timed by its words when known."""
    cjk = speech.language in ("zh", "ja")
    joiner = "" if cjk else " "
    if speech.words:
        cues: list[Cue] = []
        words: list[str] = []
        start = speech.words[0].start
        for i, w in enumerate(speech.words):
            if words and len(joiner.join([*words, w.text])) > max_chars:
                cues.append(Cue(joiner.join(words), offset + start, offset + w.start))
                words, start = [], w.start
            words.append(w.text)
            if i == len(speech.words) - 1:
                cues.append(Cue(joiner.join(words), offset + start, offset + speech.duration))
        return cues
    # no word timings: share the sentence's time among chunks by their length
    text = speech.text.strip()
    chunks = _chunks(text, max_chars, cjk)
    total = sum(len(c) for c in chunks) or 1
    cues, t = [], offset
    for c in chunks:
        dt = speech.duration * len(c) / total
        cues.append(Cue(c, t, t + dt))
        t += dt
    return cues


def _chunks(text: str, max_chars: int, cjk: bool) -> list[str]:
    if cjk:
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)] or [""]
    out, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > max_chars:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*out, cur] if cur else out


class SubtitleBurner:
    """Holds the reply's cues and blends the active one onto each frame's lower band.

    Frames are `width` x `height` (`height` defaults to `width`: square). The font scales with the
    shorter side, so text in a tall whole-photo frame is no larger than in the square one; line
    length follows the width.
    """

    def __init__(self, width: int, font_path: Path | None = None, *, height: int | None = None) -> None:
        self.width = width
        self.height = width if height is None else height
        self.font_path = font_path
        self.font_px = max(14, min(self.width, self.height) // 18)
        self.font = ImageFont.truetype(
            str(font_path or default_font_path()), self.font_px, index=_NOTO_SC_INDEX
        )
        self.cues: list[Cue] = []
        # two lines of text fit in the frame width at about this many CJK characters per cue
        self.max_chars_cjk = int(0.86 * width / self.font_px) * 2
        self.max_chars_latin = int(0.86 * width / (0.5 * self.font_px)) * 2

    def resized(self, width: int, height: int) -> SubtitleBurner:
        """This burner when the size matches, else a new one with the same font (and no cues yet)."""
        if (width, height) == (self.width, self.height):
            return self
        return SubtitleBurner(width, self.font_path, height=height)

    def add(self, speech: Speech, offset: float) -> None:
        cjk = speech.language in ("zh", "ja")
        self.cues += cues_for(speech, offset, self.max_chars_cjk if cjk else self.max_chars_latin)

    def burn(self, frames: np.ndarray, *, first_frame: int, fps: int) -> np.ndarray:
        out = None
        for j in range(len(frames)):
            cue = self._cue_at((first_frame + j + 0.5) / fps)
            if cue is None:
                continue
            if out is None:
                out = frames.copy()
            rgba, top = self._draw(cue.text)
            band = out[j, top : top + rgba.shape[0]].astype(np.float32)
            alpha = rgba[..., 3:4].astype(np.float32) / 255
            out[j, top : top + rgba.shape[0]] = (band * (1 - alpha) + rgba[..., :3] * alpha).astype(np.uint8)
        return frames if out is None else out

    def _cue_at(self, t: float) -> Cue | None:
        for cue in self.cues:
            if cue.start <= t < cue.end:
                return cue
        return None

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one burner per reply; the cache dies with it
    def _draw(self, text: str) -> tuple[np.ndarray, int]:
        """The cue as an RGBA band (white text, dark outline, soft shadow box) and its top row."""
        lines = self._wrap(text)
        line_h = int(self.font_px * 1.3)
        pad = self.font_px // 3
        band_h = line_h * len(lines) + 2 * pad
        img = Image.new("RGBA", (self.width, band_h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        widths = [draw.textlength(line, font=self.font) for line in lines]
        box_w = int(max(widths)) + 4 * pad
        x0 = (self.width - box_w) // 2
        draw.rounded_rectangle((x0, 0, x0 + box_w, band_h - 1), radius=pad * 2, fill=(0, 0, 0, 110))
        for i, (line, w) in enumerate(zip(lines, widths, strict=True)):
            draw.text(
                ((self.width - w) / 2, pad + i * line_h),
                line,
                font=self.font,
                fill=(255, 255, 255, 255),
                stroke_width=max(1, self.font_px // 12),
                stroke_fill=(0, 0, 0, 255),
            )
        top = self.height - band_h - min(self.width, self.height) // 20
        return np.asarray(img), top

    def _wrap(self, text: str) -> list[str]:
        """Greedy wrap by measured width: by character for CJK, by word otherwise."""
        limit = 0.9 * self.width
        tokens = list(text) if any("\u4e00" <= ch <= "\u9fff" for ch in text) else text.split(" ")
        sep = "" if len(tokens) == len(text) else " "
        lines, cur = [], ""
        for tok in tokens:
            trial = f"{cur}{sep}{tok}" if cur else tok
            if cur and self.font.getlength(trial) > limit:
                lines.append(cur)
                cur = tok
            else:
                cur = trial
        return [*lines, cur] if cur else lines
