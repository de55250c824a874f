"""JobStore: a durable record of every message a bot accepted, so none is lost or answered twice.

A job is written (with its audio, if any) as soon as the update arrives, before any model work, and
marked finished once the user got an answer or a clear error. After a crash, a restarted bot finds
the unfinished jobs and answers them (or, after repeated failures, tells the user). The platform's
own message id (for HTTP, the client's Idempotency-Key) makes jobs idempotent: an update delivered
twice is recognised and skipped, and a finished job can keep its response for replaying.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, Float, Integer, String, Text, UniqueConstraint, delete, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.db import KEY, Base

MAX_ATTEMPTS = 2  # a job that crashed the service this often is not tried again


class JobRow(Base):
    __tablename__ = "talktwin_jobs"
    __table_args__ = (UniqueConstraint("platform", "chat_id", "message_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(20))
    chat_id: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(KEY), index=True)
    conversation: Mapped[str] = mapped_column(String(KEY))
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    has_audio: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="accepted")  # accepted | done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # a response kept for replaying
    spec: Mapped[str | None] = mapped_column(Text, nullable=True)  # the output decided at admission


@dataclass(frozen=True)
class Job:
    id: int
    platform: str
    chat_id: str
    message_id: str
    user: str
    conversation: str
    text: str | None
    audio: bytes | None
    attempts: int
    status: str = "accepted"
    result: str | None = None
    spec: str | None = None  # JSON of the OutputSpec decided when it was first admitted


class JobStore:
    def __init__(self, engine: Engine, payload_dir: Path) -> None:
        self.engine = engine
        Base.metadata.create_all(engine, tables=[JobRow.__table__])
        columns = {c["name"] for c in inspect(engine).get_columns(JobRow.__tablename__)}
        for column in ("result", "spec"):  # a database made before these were kept
            if column not in columns:
                with engine.begin() as db:
                    db.execute(text(f"ALTER TABLE {JobRow.__tablename__} ADD COLUMN {column} TEXT"))
        self.payload_dir = payload_dir
        payload_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def accept(
        self,
        platform: str,
        chat_id: int | str,
        message_id: int | str,
        user: str,
        conversation: str,
        *,
        text: str | None = None,
        audio: bytes | None = None,
    ) -> int | None:
        """Record a new job; None when this message was accepted before (a redelivery)."""
        row = JobRow(
            platform=platform,
            chat_id=str(chat_id),
            message_id=str(message_id),
            user=user,
            conversation=conversation,
            text=text,
            has_audio=int(audio is not None),
        )
        with self._lock, Session(self.engine) as s:
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                return None
            if audio is not None:
                self._payload(row.id).write_bytes(audio)  # before commit: a committed job has its audio
            s.commit()
            return row.id

    def start(self, job_id: int, spec: str | None = None) -> None:
        """Count an attempt (a crash during it counts too) and keep the output decided for it."""
        with self._lock, Session(self.engine) as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is not None:
                row.attempts += 1
                if spec is not None and row.spec is None:
                    row.spec = spec

    def finish(self, job_id: int, result: str | None = None) -> None:
        """The user got an answer or a clear error: done, and its audio is deleted.

        `result` (the response as sent) is kept so that a retried request can be answered with it."""
        with self._lock, Session(self.engine) as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is not None:
                row.status, row.text, row.has_audio, row.result = "done", None, 0, result
        self._payload(job_id).unlink(missing_ok=True)

    def find(self, platform: str, chat_id: int | str, message_id: int | str) -> Job | None:
        """The job recorded for this message, finished or not."""
        with Session(self.engine) as s:
            row = s.scalars(
                select(JobRow).where(
                    JobRow.platform == platform,
                    JobRow.chat_id == str(chat_id),
                    JobRow.message_id == str(message_id),
                )
            ).first()
            return None if row is None else self._job(row)

    def unfinished(self, platform: str) -> list[Job]:
        with Session(self.engine) as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.platform == platform, JobRow.status == "accepted")
                .order_by(JobRow.id)
            ).all()
            return [self._job(r) for r in rows]

    def _job(self, row: JobRow) -> Job:
        payload = self._payload(row.id)
        return Job(
            id=row.id,
            platform=row.platform,
            chat_id=row.chat_id,
            message_id=row.message_id,
            user=row.user,
            conversation=row.conversation,
            text=row.text,
            audio=payload.read_bytes() if row.has_audio and payload.exists() else None,
            attempts=row.attempts,
            status=row.status,
            result=row.result,
            spec=row.spec,
        )

    def forget(self, user: str) -> None:
        with self._lock, Session(self.engine) as s, s.begin():
            ids = s.scalars(select(JobRow.id).where(JobRow.user == user)).all()
            s.execute(delete(JobRow).where(JobRow.user == user))
        for job_id in ids:
            self._payload(job_id).unlink(missing_ok=True)

    def _payload(self, job_id: int) -> Path:
        return self.payload_dir / f"{job_id}.audio"
