"""The service: load every model once, start each adapter that has credentials, stop cleanly.

`python run_bots.py` runs this. The HTTP API and web page always run (127.0.0.1:7870 by default);
Telegram starts when TELEGRAM_BOT_TOKEN is set. SIGINT/SIGTERM stop taking updates, let the reply
in work finish, then exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from bots.core.blobs import blob_store
from bots.core.conversations import Conversations
from bots.core.execution import InProcessExecutor, JobExecutor, load_pipeline
from bots.core.model_process import ModelProcessExecutor
from bots.discord.bot import DiscordBot
from bots.discord.options import DiscordOptions
from bots.http.app import HttpOptions
from bots.http.server import HttpServer
from bots.jobs import JobStore
from bots.service import ReplyService
from bots.telegram.bot import TelegramBot
from bots.telegram.options import TelegramOptions
from bots.telegram.settings import TelegramSettings
from knowledge.base import KnowledgeBase
from memory.store import MemoryStore
from pipeline.config import Settings
from pipeline.orchestrator import ReplyPipeline
from pipeline.render.factory import renders_on_gpu
from pipeline.tts.factory import default_voice

log = logging.getLogger(__name__)
VOICES = {"auto": "auto: edge-tts when reachable, else Piper (English) / Mandarin (Chinese) / espeak-ng"}


@dataclass
class Components:
    """The composition root: what every adapter shares, built once.

    Embedded mode: one pipeline (models loaded once) in this process, run by the in-process executor.
    Queue mode (`queue.broker_url` set): no pipeline here; replies go to Celery workers over Redis.
    Memory, knowledge, the job ledger and the reply service are here in both, and the application
    core (`core`) is built on them.
    """

    pipeline: ReplyPipeline | None
    memory: MemoryStore
    knowledge: KnowledgeBase
    service: ReplyService
    jobs: JobStore
    settings: Settings | None = None
    executor: JobExecutor | None = None  # None: built here for the mode
    core: Conversations = field(init=False)

    def __post_init__(self) -> None:
        if self.settings is None:
            assert self.pipeline is not None, "Components need settings or a pipeline"
            self.settings = self.pipeline.settings
        settings = self.settings
        blobs = blob_store(settings)
        if self.executor is None and settings.queue.broker_url:
            from bots.queue.executor import CeleryExecutor

            self.executor = CeleryExecutor(settings, blobs)
            drop_here, tell_workers = self.memory.forget_photo, self.executor.forget_photo

            def forget_photo(image: bytes) -> None:
                if drop_here is not None:
                    drop_here(image)  # the caches on this machine's disk
                tell_workers(image)  # the workers' renderers, in memory and on their disks

            self.memory.forget_photo = forget_photo
        elif self.executor is None:
            assert self.pipeline is not None, "embedded mode needs the pipeline or an executor"
            self.executor = InProcessExecutor(self.pipeline, blobs, self.service.pool)
        check_photo = getattr(self.executor, "check_photo", None)
        if check_photo is None:
            assert self.pipeline is not None
            check_photo = self.pipeline.prepare_avatar
        self.core = Conversations(
            memory=self.memory,
            knowledge=self.knowledge,
            jobs=self.jobs,
            service=self.service,
            executor=self.executor,
            blobs=blobs,
            check_photo=check_photo,
            frame=settings.render.frame,
            job_patience_s=job_patience_s(settings),
            default_voice=default_voice(settings),
        )

    @classmethod
    def load(cls, settings: Settings) -> Components:
        """Build everything for `settings`: in queue mode without loading a single model."""
        executor: JobExecutor | None = None
        if settings.queue.broker_url:
            pipeline = None
            knowledge = KnowledgeBase.from_settings(settings)
            memory = MemoryStore.from_settings(settings, knowledge=knowledge)
            workers = 1  # unknown here: "try again in N s" errs on the long side
        elif settings.reply.models_process:
            pipeline = None
            knowledge = KnowledgeBase.from_settings(settings)
            memory = MemoryStore.from_settings(settings, knowledge=knowledge)
            models = ModelProcessExecutor(settings, knowledge if settings.knowledge.enabled else None)
            models.start()  # every model loads now, in the child, as they would here
            drop_here = memory.forget_photo

            def forget_photo(image: bytes) -> None:
                if drop_here is not None:
                    drop_here(image)  # the caches on disk
                models.forget_photo(image)  # what the child's renderers hold

            memory.forget_photo = forget_photo
            executor, workers = models, int(models.info.get("workers", 1))
        else:
            knowledge = KnowledgeBase.from_settings(settings)
            pipeline, memory = load_pipeline(settings, knowledge if settings.knowledge.enabled else None)
            pipeline.warm_up()
            workers = settings.reply.workers or (4 if renders_on_gpu(pipeline.renderer) else 1)
        if settings.knowledge.shared_folder:
            folder = settings.resolve(settings.knowledge.shared_folder)
            log.info("shared knowledge folder %s: %s", folder, knowledge.sync_shared(folder))
        tg = TelegramSettings.of(settings)
        service = ReplyService(
            max_pending=tg.max_pending,
            max_queue=settings.reply.max_queue,
            rate_limit=tg.rate_limit_per_minute,
            workers=workers,
            nice=settings.reply.nice,
        )
        jobs = JobStore(memory.engine, settings.resolve(settings.paths.data_dir) / "jobs")
        return cls(pipeline, memory, knowledge, service, jobs, settings, executor)

    def describe(self) -> list[str]:
        """What runs where, for the start-up lines."""
        s = self.settings
        assert s is not None
        if isinstance(self.executor, ModelProcessExecutor):
            info = self.executor.info
            return [
                f"speech recognition {s.asr.backend}: {s.asr.model}",
                f"language model     {s.llm.backend}: {s.llm.model}",
                f"voice              {VOICES.get(s.tts.backend, s.tts.backend)}",
                f"renderer           {s.render.backend} on {info.get('device')}, {s.render.size} px, "
                f"{self.service.workers} repl{'y' if self.service.workers == 1 else 'ies'} at a time",
                f"models             in their own process (pid {info.get('pid')}): a crash costs one retry",
                f"data               {s.resolve(s.paths.data_dir)}",
            ]
        if self.pipeline is None:
            return [
                f"replies            queue mode: Celery workers over {_redacted(s.queue.broker_url)}",
                f"data               {s.resolve(s.paths.data_dir)}",
            ]
        device = self.pipeline.renderer.capabilities.device
        return [
            f"speech recognition {s.asr.backend}: {s.asr.model}",
            f"language model     {s.llm.backend}: {s.llm.model}",
            f"voice              {VOICES.get(s.tts.backend, s.tts.backend)}",
            f"renderer           {s.render.backend} on {device}, {s.render.size} px, "
            f"{self.service.workers} repl{'y' if self.service.workers == 1 else 'ies'} at a time",
            f"data               {s.resolve(s.paths.data_dir)}",
        ]

    def close(self) -> None:
        self.service.shutdown()
        self.executor.close()
        self.memory.close()
        if self.pipeline is not None:
            self.pipeline.close()


def job_patience_s(settings: Settings) -> float:
    """How long a reply may take from admission, every retry included, before it is given up."""
    if settings.queue.broker_url:
        from bots.queue.executor import CeleryExecutor

        return CeleryExecutor.patience_s(settings)
    return settings.reply.timeout_s * 2 + 60  # a crashed models' process gets one more go


def _redacted(url: str) -> str:
    """A broker URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def configured_adapters(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    names = ["telegram"] if TelegramOptions.from_env(environ, settings) else []
    if DiscordOptions.from_env(environ, settings):
        names.append("discord")
    return names


async def serve(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Run every configured adapter until SIGINT/SIGTERM."""
    environ = os.environ if environ is None else environ
    http = HttpOptions.from_env(environ)  # refuses an open address without API keys, before loading
    components = Components.load(settings)
    adapters: list = [HttpServer(http, components)]
    telegram = TelegramOptions.from_env(environ, settings)
    if telegram is not None:
        adapters.append(TelegramBot(telegram, components))
    discord_options = DiscordOptions.from_env(environ, settings)
    if discord_options is not None:
        adapters.append(DiscordBot(discord_options, components))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for adapter in adapters:
            await adapter.start()
        lines = [a.describe() for a in adapters]
        if telegram is None:
            lines.append("Telegram           off (set TELEGRAM_BOT_TOKEN to start it)")
        if discord_options is None:
            lines.append("Discord            off (set DISCORD_BOT_TOKEN to start it)")
        lines += components.describe()
        print("TalkTwin is running. Ctrl+C stops.\n  " + "\n  ".join(lines), flush=True)
        await stop.wait()
        busy = components.service.queue_depth()
        print("Stopping: finishing the reply in work..." if busy else "Stopping.", flush=True)
    finally:
        for adapter in adapters:
            await adapter.stop()
        components.close()
