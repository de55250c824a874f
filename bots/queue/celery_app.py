"""The Celery application both sides of queue mode share: the bots send jobs, workers run them.

A reply is one task, `talktwin.reply`, whose argument is a ReplyJob as JSON and whose result is a
ReplyOutcome as JSON (or the user-facing error's code). Acknowledged late, and rejected when the
worker process running it dies, so a killed worker's job goes back to the queue; a job delivered
`max_deliveries` times without an answer is given up with a clear reply instead of killing more
workers. `talktwin.check_photo` checks a new avatar where the face detector lives.
"""

from __future__ import annotations

from celery import Celery

from pipeline.config import Settings

REPLY_TASK = "talktwin.reply"
CHECK_PHOTO_TASK = "talktwin.check_photo"
# Redis pub/sub channel: a photo a user forgot, for every worker to drop what it derived from it
FORGET_PHOTO_CHANNEL = "talktwin:forget-photo"
QUEUE = "talktwin"


def make_app(settings: Settings) -> Celery:
    url = settings.queue.broker_url
    app = Celery("talktwin", broker=url, backend=url)
    app.conf.update(
        task_acks_late=True,  # acknowledged when the reply is made, not when a worker takes it
        task_reject_on_worker_lost=True,  # the process running it died: back to the queue
        worker_prefetch_multiplier=1,  # a worker holds no job it is not working on
        task_default_queue=QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_proc_alive_timeout=300,  # a pool child loads every model before it says it is up
        broker_transport_options={
            # an unacknowledged job whose worker vanished returns to the queue after this long
            "visibility_timeout": settings.queue.redelivery_after_s,
            "unacked_restore_interval": 1,  # look for such jobs every 10 s (kombu's default: 100 s)
        },
    )
    return app
