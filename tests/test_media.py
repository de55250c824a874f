"""Audio decoding of what users send, and the mp4 that goes back (real ffmpeg, real PyAV)."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PROJECT_ROOT
from pipeline.errors import AudioTooLong, EmptyAudio, FileTooLarge, UnreadableAudio
from pipeline.media.audio_input import decode_audio, resample
from pipeline.media.subtitles import SubtitleBurner
from pipeline.media.video_output import VideoWriter
from pipeline.types import Audio, Speech, StageTimings, VoiceSettings, WordTiming
from tests.helpers import make_tone, probe_mp4


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("voice.ogg", ["-c:a", "libopus", "-b:a", "24k"]),  # a Telegram voice note
        ("song.mp3", []),
        ("memo.m4a", ["-c:a", "aac", "-movflags", "+faststart"]),
        ("plain.wav", []),
    ],
)
def test_decodes_what_users_send(tmp_path: Path, name: str, args: list[str]):
    path = make_tone(tmp_path / name, 2.0, args)
    audio = decode_audio(path.read_bytes())
    assert audio.sample_rate == 16000
    assert audio.duration == pytest.approx(2.0, abs=0.08)
    assert np.abs(audio.samples).max() == pytest.approx(
        0.125, abs=0.07
    )  # lavfi sine amplitude, codecs overshoot a little


def test_decodes_the_sound_track_of_a_video(tmp_path: Path):
    from pipeline.media.ffmpeg import run_ffmpeg

    video = tmp_path / "clip.mp4"
    run_ffmpeg(
        [
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10:duration=1.5",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:duration=1.5",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-shortest",
            str(video),
        ]
    )
    assert decode_audio(video).duration == pytest.approx(1.5, abs=0.1)


def test_not_audio_is_refused_in_both_languages(tmp_path: Path, avatar_bytes: bytes):
    with pytest.raises(UnreadableAudio) as err:
        decode_audio(avatar_bytes)
    assert "audio" in err.value.user_message("en")
    assert "音频" in err.value.user_message("zh")
    with pytest.raises(UnreadableAudio):
        decode_audio(b"OggS" + bytes(range(256)) * 40)  # corrupt voice note


def test_empty_and_silent_recordings(tmp_path: Path):
    with pytest.raises(EmptyAudio):
        decode_audio(b"")
    from pipeline.media.ffmpeg import run_ffmpeg

    silent = tmp_path / "silent.ogg"
    run_ffmpeg(
        ["-y", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "1", "-c:a", "libopus", str(silent)]
    )
    with pytest.raises(EmptyAudio) as err:
        decode_audio(silent)
    assert "录音" in err.value.user_message("zh")


def test_too_long_reports_real_length_and_limit(tmp_path: Path):
    path = make_tone(tmp_path / "long.ogg", 9.0, ["-c:a", "libopus"])
    with pytest.raises(AudioTooLong) as err:
        decode_audio(path, max_seconds=5)
    assert err.value.user_message("en") == "That recording is 9 s long; the limit is 5 s."
    assert err.value.user_message("zh") == "这段录音长 9 秒，上限是 5 秒。"


def test_too_large_is_refused_before_decoding():
    with pytest.raises(FileTooLarge):
        decode_audio(b"\0" * 2000, max_bytes=1000)


def test_resample_keeps_duration_and_pitch():
    t = np.arange(22050) / 22050
    tone = Audio(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22050)
    out = resample(tone, 24000)
    assert out.duration == pytest.approx(1.0, abs=1e-3)
    spectrum = np.abs(np.fft.rfft(out.samples))
    assert np.fft.rfftfreq(len(out.samples), 1 / 24000)[spectrum.argmax()] == pytest.approx(440, abs=2)


def _moving_frames(n: int, size: int) -> np.ndarray:
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = 40
        frames[i, size // 4 : size // 2, (i * 3) % size :, 1] = 200
    return frames


def test_video_writer_makes_h264_aac_mp4_of_the_speech_length(tmp_path: Path):
    fps, size, seconds = 25, 128, 2.4
    audio = Audio((0.3 * np.sin(np.arange(int(24000 * seconds)) * 0.05)).astype(np.float32), 24000)
    out = tmp_path / "reply.mp4"
    with VideoWriter(out, size, fps) as writer:
        frames = _moving_frames(round(seconds * fps), size)
        for i in range(0, len(frames), 16):  # streamed in batches
            writer.write(frames[i : i + 16])
        writer.finish(audio)
    info = probe_mp4(out)
    assert (info.video_codec, info.audio_codec, info.pix_fmt) == ("h264", "aac", "yuv420p")
    assert (info.width, info.height) == (size, size)
    assert len(info.frames) == 60
    assert info.duration == pytest.approx(seconds, abs=0.1)
    assert info.audio_duration == pytest.approx(seconds, abs=0.1)
    assert out.read_bytes()[4:8] == b"ftyp" and out.read_bytes().find(b"moov") < out.read_bytes().find(
        b"mdat"
    )


def test_video_writer_rejects_wrong_frames(tmp_path: Path):
    with VideoWriter(tmp_path / "x.mp4", 64, 25) as writer:
        with pytest.raises(ValueError, match="expected uint8 frames"):
            writer.write(np.zeros((2, 32, 32, 3), np.uint8))
        writer.abort()


@pytest.mark.parametrize(
    ("text", "language"), [("Hello there, nice to meet you.", "en"), ("你好，很高兴认识你。", "zh")]
)
def test_subtitles_are_burned_into_the_lower_band_while_spoken(text: str, language: str):
    size, fps = 256, 25
    speech = Speech(
        text, language, Audio(np.zeros(24000, np.float32), 24000), words=(WordTiming(text, 0.2, 0.8),)
    )
    burner = SubtitleBurner(size)
    burner.add(speech, offset=1.0)  # the sentence starts 1 s into the clip
    frames = np.full((50, size, size, 3), 128, np.uint8)
    out = burner.burn(frames, first_frame=0, fps=fps)
    lower, upper = slice(size * 2 // 3, size), slice(0, size // 2)
    changed = [bool(np.any(out[i, lower] != 128)) for i in range(50)]
    assert not any(changed[:30]) and all(changed[31:49])  # cue runs 1.2 s .. 2.0 s
    assert not np.any(out[:, upper] != 128)  # text stays in the lower band
    assert np.any(out[40, lower] > 240) and np.any(out[40, lower] < 40)  # white text, dark outline


def test_video_writer_takes_non_square_frames(tmp_path: Path):
    width, height, fps = 96, 160, 25  # a portrait whole-photo frame
    audio = Audio(np.zeros(24000, np.float32), 24000)
    frames = np.zeros((25, height, width, 3), np.uint8)
    frames[:, : height // 2, :, 2] = 200  # blue top half: the orientation must survive
    out = tmp_path / "tall.mp4"
    with VideoWriter(out, width, fps, height=height) as writer:
        writer.write(frames)
        with pytest.raises(ValueError, match=f"expected uint8 frames of shape \\(B, {height}, {width}, 3\\)"):
            writer.write(np.zeros((1, width, height, 3), np.uint8))  # transposed
        writer.finish(audio)
    info = probe_mp4(out)
    assert (info.width, info.height) == (width, height) and len(info.frames) == 25
    assert (
        info.frames[:, : height // 3, :, 2].mean() > 150 and info.frames[:, -height // 3 :, :, 2].mean() < 50
    )
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", 97, fps, height=160)


def test_subtitles_fit_a_non_square_frame():
    width, height, fps = 216, 384, 25
    text = "A fairly long English sentence that has to wrap onto a second line here."
    speech = Speech(
        text, "en", Audio(np.zeros(24000, np.float32), 24000), words=(WordTiming(text, 0.0, 1.0),)
    )
    burner = SubtitleBurner(width, height=height)
    assert burner.font_px == max(14, width // 18)  # the shorter side sets the text size
    assert burner.resized(width, height) is burner and burner.resized(384, 216).height == 216
    burner.add(speech, offset=0.0)
    out = burner.burn(np.full((5, height, width, 3), 128, np.uint8), first_frame=0, fps=fps)
    changed = np.argwhere(np.any(out[2] != 128, axis=-1))
    assert changed[:, 0].min() > height * 2 // 3  # in the lower band of the tall frame
    assert changed[:, 1].min() > 0 and changed[:, 1].max() < width - 1  # and inside its width


class _ToneTTS:
    """A stand-in synthesizer: a short voiced tone for any text."""

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        t = np.arange(8000) / 16000
        samples = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
        return Speech(text, language, Audio(samples, 16000), engine="tone")


@pytest.mark.parametrize(("square", "size"), [(False, (218, 256)), (True, (256, 256))])
def test_assembler_frames_photo_mode_or_the_square_crop(tmp_path: Path, square: bool, size: tuple):
    """A reply asked for with square frames (a round video) uses the face crop in photo mode too."""
    from pipeline.assembler import ReplyAssembler
    from pipeline.render.warp import WarpRenderer

    renderer = WarpRenderer(device="cpu", frame="photo")
    avatar = renderer.prepare((PROJECT_ROOT / "assets" / "grace_hopper.jpg").read_bytes(), 256)
    assembler = ReplyAssembler(
        fmt="video",
        square=square,
        language="en",
        voice=VoiceSettings(),
        synthesizer=_ToneTTS(),
        renderer=renderer,
        avatar=avatar,
        out_path=tmp_path / "reply.mp4",
        fps=25,
        max_seconds=30,
        writer_options={},
        subtitles=SubtitleBurner(avatar.size),  # as the orchestrator builds it: fitted by the assembler
        timings=StageTimings(),
    )
    assembler.add("Hello there.")
    info = probe_mp4(assembler.finish())
    assert (info.width, info.height) == size
