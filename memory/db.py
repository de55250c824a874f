"""The memory tables (SQLAlchemy 2): turns, rolling summaries, remembered facts, profiles, avatars.

Any SQLAlchemy URL works; the default is a SQLite file in the data dir. SQLite runs with
`secure_delete` so forgotten rows are overwritten on disk, not left in free pages.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import (
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KEY = 160  # key columns: "platform:chat:user" fits easily


class Base(DeclarativeBase):
    pass


class Turn(Base):
    __tablename__ = "talktwin_turns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation: Mapped[str] = mapped_column(String(KEY), index=True)
    user: Mapped[str] = mapped_column(String(KEY), index=True)
    user_text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Summary(Base):
    __tablename__ = "talktwin_summaries"
    conversation: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    upto_turn: Mapped[int] = mapped_column(Integer)  # turns with id <= this are folded in
    updated: Mapped[float] = mapped_column(Float, default=time.time)


class FactRow(Base):
    __tablename__ = "talktwin_facts"
    __table_args__ = (UniqueConstraint("conversation", "user", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation: Mapped[str] = mapped_column(String(KEY), index=True)
    user: Mapped[str] = mapped_column(String(KEY), index=True)
    key: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    updated: Mapped[float] = mapped_column(Float, default=time.time)


class ProfileRow(Base):
    __tablename__ = "talktwin_profiles"
    user: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    data: Mapped[str] = mapped_column(Text)  # UserProfile as JSON


class AvatarRow(Base):
    __tablename__ = "talktwin_avatars"
    user: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64), index=True)


TABLES = (Turn, Summary, FactRow, ProfileRow, AvatarRow)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'memory.sqlite3'}"


def make_engine(url: str) -> Engine:
    """An engine with the tables created; SQLite gets secure deletes and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA secure_delete = ON")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    for attempt in range(1, 4):
        try:
            Base.metadata.create_all(engine)
            return engine
        except DBAPIError as e:
            # Another process opening the same new database (a second worker starting at the same
            # moment) created a table between this one's check and its CREATE; look again.
            if attempt == 3 or not any(s in str(e).lower() for s in ("already exists", "duplicate key")):
                raise
    raise AssertionError("unreachable")
