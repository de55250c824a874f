"""The durable job record the bots and the HTTP API share."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from bots.jobs import JobStore


def test_a_database_from_before_kept_responses_is_upgraded_in_place(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as db:  # the table as the first release created it, with one open job
        db.execute(
            text(
                "CREATE TABLE talktwin_jobs (id INTEGER PRIMARY KEY, platform VARCHAR(20),"
                " chat_id VARCHAR(64), message_id VARCHAR(64), user VARCHAR(200), conversation VARCHAR(200),"
                " text TEXT,"
                " has_audio INTEGER, status VARCHAR(16), attempts INTEGER, created FLOAT,"
                " UNIQUE (platform, chat_id, message_id))"
            )
        )
        db.execute(
            text(
                "INSERT INTO talktwin_jobs VALUES (1, 'telegram', '5', '9', 'telegram:5', 'telegram:5',"
                " 'Still there?', 0, 'accepted', 1, 0)"
            )
        )
    jobs = JobStore(engine, tmp_path / "jobs")
    (old,) = jobs.unfinished("telegram")
    assert old.text == "Still there?" and old.attempts == 1 and old.result is None
    jobs.finish(old.id, '{"status": 200}')
    assert jobs.find("telegram", 5, 9).result == '{"status": 200}'
    assert jobs.accept("telegram", 5, 9, "telegram:5", "telegram:5", text="again") is None  # still unique


def test_finished_jobs_drop_their_audio_and_forget_removes_the_rest(tmp_path: Path):
    jobs = JobStore(create_engine(f"sqlite:///{tmp_path / 'jobs.db'}"), tmp_path / "jobs")
    job_id = jobs.accept("discord", 1, 2, "discord:7", "discord:7", audio=b"OggS voice")
    assert jobs.find("discord", 1, 2).audio == b"OggS voice"
    jobs.finish(job_id)
    assert jobs.find("discord", 1, 2).audio is None and list((tmp_path / "jobs").iterdir()) == []
    jobs.forget("discord:7")
    assert jobs.find("discord", 1, 2) is None
