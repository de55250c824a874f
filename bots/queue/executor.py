"""CeleryExecutor: the bots' side of queue mode. Jobs go to Redis; workers anywhere make them.

`run` sends the job and waits for its result without blocking the event loop; a cancel is written
to Redis, where the worker running the job sees it. Errors come back as the user-facing error's code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

import redis
from celery import Celery

from bots.core.blobs import FolderBlobStore
from bots.core.reply_job import ReplyJob, ReplyOutcome
from bots.queue.celery_app import CHECK_PHOTO_TASK, FORGET_PHOTO_CHANNEL, REPLY_TASK, make_app
from bots.queue.worker import CANCEL_KEY
from pipeline.cancel import CancelToken, TookTooLong
from pipeline.config import Settings
from pipeline.errors import InternalFailure, error_for_code

POLL_S = 0.1
CHECK_PHOTO_TIMEOUT_S = 120
TASK_KEY = "talktwin:task:{}"
log = logging.getLogger(__name__)


class CeleryExecutor:
    def __init__(self, settings: Settings, blobs: FolderBlobStore, app: Celery | None = None) -> None:
        self.settings = settings
        self.blobs = blobs
        self.app = app or make_app(settings)
        self.redis = redis.Redis.from_url(settings.queue.broker_url)
        if settings.queue.redelivery_after_s <= settings.reply.timeout_s:
            log.warning(
                "queue.redelivery_after_s (%g s) is not above reply.timeout_s (%g s): a slow reply may be "
                "handed to a second worker while the first still makes it",
                settings.queue.redelivery_after_s,
                settings.reply.timeout_s,
            )

    @staticmethod
    def patience_s(settings: Settings) -> float:
        """How long a job may take here, every redelivery included, before its answer is no use."""
        queue = settings.queue
        return settings.reply.timeout_s + queue.redelivery_after_s * queue.max_deliveries + 60

    async def run(self, job: ReplyJob, cancel: CancelToken) -> ReplyOutcome:
        # One task per job, even across a restart of the bots: a resumed job whose task is still
        # queued or in work waits for that task instead of having the reply made twice.
        key = TASK_KEY.format(job.id)
        task_id = f"{job.id}-{secrets.token_hex(6)}"
        if not await asyncio.to_thread(self.redis.set, key, task_id, nx=True, ex=86400):
            earlier = await asyncio.to_thread(self.redis.get, key)
            task_id, resend = (earlier.decode() if earlier else task_id), False
        else:
            resend = True
        try:
            value = await self._call(REPLY_TASK, job.to_json(), task_id, cancel, job.deadline, send=resend)
        finally:
            await asyncio.to_thread(self.redis.delete, key)
        return ReplyOutcome.from_json(json.dumps(value["outcome"]))

    def forget_photo(self, image: bytes) -> None:
        """Have every worker drop what its renderers derived from `image`, in memory and in its own
        data folder (a worker on another machine has its own). Published once: a worker that is
        down now has lost its memory anyway, and finds only its disk caches (see deployment.md)."""
        try:
            receivers = self.redis.publish(FORGET_PHOTO_CHANNEL, image)
            log.info("forgotten photo sent to %d worker process(es)", receivers)
        except redis.RedisError as e:
            log.warning("could not tell the workers to forget a photo: %s", e)

    def check_photo(self, image: bytes) -> None:
        """Check a new avatar on a worker (where the face detector is); blocking, run off the loop."""
        ref = self.blobs.put(image)
        try:
            result = self.app.send_task(CHECK_PHOTO_TASK, args=[ref], task_id=f"photo-{secrets.token_hex(6)}")
            try:
                value = json.loads(result.get(timeout=CHECK_PHOTO_TIMEOUT_S))
            finally:
                result.forget()
        finally:
            self.blobs.delete(ref)
        if "error" in value:
            raise error_for_code(value["error"], value.get("detail", ""), value.get("params"))

    async def _call(
        self,
        name: str,
        arg: str,
        task_id: str,
        cancel: CancelToken | None,
        deadline: float | None,
        *,
        send: bool = True,
    ) -> dict:
        if send:
            result = await asyncio.to_thread(self.app.send_task, name, args=[arg], task_id=task_id)
        else:
            result = self.app.AsyncResult(task_id)
        give_up = (deadline or time.time() + 180) + 30  # the worker refuses it after the deadline
        cancelled = False
        try:
            while not await asyncio.to_thread(result.ready):
                if cancel is not None and cancel.cancelled and not cancelled:
                    cancelled = True
                    await asyncio.to_thread(self.redis.set, CANCEL_KEY.format(task_id), 1, ex=3600)
                if time.time() > give_up:
                    await asyncio.to_thread(result.revoke)
                    raise TookTooLong("no worker answered in time")
                await asyncio.sleep(POLL_S)
            if not await asyncio.to_thread(result.successful):
                raise InternalFailure(f"task {task_id} failed: {result.result!r}")
            value = json.loads(await asyncio.to_thread(result.get, timeout=10))
        finally:
            await asyncio.to_thread(result.forget)
        if "error" in value:
            raise error_for_code(value["error"], value.get("detail", ""), value.get("params"))
        return value

    def close(self) -> None:
        self.redis.close()
