"""Running a ReplyJob: the one function every execution backend calls, and the in-process backend.

`execute` turns a job into pipeline calls and the pipeline's result into an outcome; it is all a
worker needs, wherever it runs. `InProcessExecutor` runs it on the service's own worker threads.
`load_pipeline` builds the pipeline the same way wherever replies are made (the service, the models'
process, a queue worker).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bots.core.blobs import FolderBlobStore
from bots.core.reply_job import ReplyJob, ReplyOutcome
from pipeline.cancel import CancelToken, TookTooLong
from pipeline.config import Settings
from pipeline.context import KnowledgeSearch
from pipeline.orchestrator import ReplyPipeline, ReplyRequest, ReplyResult

if TYPE_CHECKING:
    from memory.store import MemoryStore


class JobExecutor(Protocol):
    """Runs reply jobs somewhere: this process, a child process, or workers on other machines."""

    async def run(self, job: ReplyJob, cancel: CancelToken) -> ReplyOutcome: ...

    def close(self) -> None: ...


def load_pipeline(
    settings: Settings, knowledge: KnowledgeSearch | None = None
) -> tuple[ReplyPipeline, MemoryStore]:
    """Load the models, over the persistent memory: the pipeline and its context, the MemoryStore.

    The stores are the application's, not the pipeline's: the memory database is shared with the
    service (profiles, avatars, /forget), and `knowledge` may be reached elsewhere (the service's own
    from the models' process); None = the store opens the knowledge base itself when it is enabled.
    The pipeline's chat model also writes the memory's summaries of older turns.
    """
    from memory.store import MemoryStore

    memory = MemoryStore.from_settings(settings, knowledge=knowledge)  # type: ignore[arg-type]
    pipeline = ReplyPipeline.from_settings(settings, context=memory)
    memory.summarize_with(pipeline.chat_model)
    return pipeline, memory


def execute(
    pipeline: ReplyPipeline, blobs: FolderBlobStore, job: ReplyJob, cancel: CancelToken | None
) -> ReplyOutcome:
    """Make the reply a job asks for; the answer's media goes into `blobs`."""
    if job.deadline is not None and time.time() > job.deadline:
        raise TookTooLong("the job waited past its deadline")  # the answer would come too late
    request = ReplyRequest(
        user=job.user,
        conversation=job.conversation,
        text=job.text,
        audio=blobs.path(job.audio) if job.audio else None,
        avatar=blobs.read(job.avatar) if job.avatar else None,
        voice=job.voice,
        format=job.output.kind,
        square=job.output.square,
        max_seconds=job.output.longest_s,
        subtitles=job.subtitles,
        cancel=cancel,
    )
    with tempfile.TemporaryDirectory(prefix="talktwin-job-") as tmp:
        out = Path(tmp) / f"reply.{job.output.container or 'mp4'}"
        if job.say is not None:
            result = pipeline.speak(job.say, request, out)
        else:
            result = pipeline.reply(request, out)
        media = blobs.put_file(result.media_path) if result.media_path is not None else None
    return outcome_of(job.id, result, media)


def outcome_of(job_id: str, result: ReplyResult, media: str | None) -> ReplyOutcome:
    transcript = result.transcript
    return ReplyOutcome(
        job_id=job_id,
        media=media,
        kind=result.format if result.format in ("video", "voice", "text") else "video",  # type: ignore[arg-type]
        question=result.question,
        answer=result.answer,
        language=result.language,
        duration=result.duration,
        transcript=transcript.text if transcript else None,
        transcript_language=transcript.language if transcript else None,
        truncated=result.truncated,
        truncation=result.truncation,
        timings=result.timings.as_dict(),
    )


class InProcessExecutor:
    """Runs jobs on worker threads of this process, with the models this process loaded."""

    def __init__(self, pipeline: ReplyPipeline, blobs: FolderBlobStore, pool: Executor) -> None:
        self.pipeline = pipeline
        self.blobs = blobs
        self.pool = pool

    async def run(self, job: ReplyJob, cancel: CancelToken) -> ReplyOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, execute, self.pipeline, self.blobs, job, cancel)

    def close(self) -> None:
        """The pool belongs to the reply service, which shuts it down."""
