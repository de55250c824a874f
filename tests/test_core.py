"""The application core's plain parts: output decisions, job messages, the blob store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bots.core.blobs import FolderBlobStore, UnknownBlob
from bots.core.reply_job import OutputSpec, ReplyJob, ReplyOutcome, decide_output
from pipeline.types import VoiceSettings


@pytest.mark.parametrize(
    ("mode", "round_s", "frame", "expected"),
    [
        ("video_note", 60.0, "square", OutputSpec(kind="video", round=True, max_seconds=60.0, max_mb=50)),
        ("video_note", 60.0, "photo", OutputSpec(kind="video", round=False, max_mb=50, aspect="photo")),
        ("video_note", None, "square", OutputSpec(kind="video", round=False, max_mb=50)),
        ("video", 60.0, "square", OutputSpec(kind="video", max_mb=50)),
        ("voice", 60.0, "square", OutputSpec(kind="voice", max_mb=50, audio_codec="opus")),
        ("text", 60.0, "square", OutputSpec(kind="text", max_mb=50, audio_codec="")),
    ],
)
def test_the_output_is_decided_from_mode_platform_and_frame(mode, round_s, frame, expected):
    assert decide_output(mode, max_upload_mb=50, round_video_s=round_s, frame=frame) == expected


def test_jobs_and_outcomes_survive_a_json_round_trip():
    job = ReplyJob(
        id="42",
        user="telegram:7",
        conversation="telegram:-100:7",
        output=OutputSpec(kind="voice", audio_codec="opus", max_mb=20),
        audio="ab" * 16,
        avatar="cd" * 32,
        voice=VoiceSettings("zh-CN-XiaoxiaoNeural", rate=10),
        deadline=123.5,
    )
    assert ReplyJob.from_json(job.to_json()) == job
    outcome = ReplyOutcome("42", "ef" * 16 + ".ogg", "voice", "问", "答", "zh", 2.5, timings={"asr": 0.5})
    assert ReplyOutcome.from_json(outcome.to_json()) == outcome


def test_blob_refs_never_leave_the_store(tmp_path: Path):
    blobs = FolderBlobStore(tmp_path / "blobs")
    (tmp_path / "secret").write_text("no")
    for ref in ("../secret", "/etc/passwd", "..", "", "a" * 31, "x" * 40, "ab" * 16 + "/x"):
        with pytest.raises(UnknownBlob):
            blobs.path(ref)
    ref = blobs.put(b"audio", ".ogg")
    assert blobs.read(ref) == b"audio" and ref.endswith(".ogg")
    blobs.delete(ref)
    with pytest.raises(UnknownBlob):
        blobs.path(ref)


def test_shared_blobs_are_stored_once_and_kept_fresh_while_used(tmp_path: Path):
    blobs = FolderBlobStore(tmp_path)
    first = blobs.put_shared(b"photo")
    old = time.time() - 3 * 86400
    os.utime(blobs.path(first), (old, old))
    assert blobs.put_shared(b"photo") == first  # used again: its age starts over
    leftover = blobs.put(b"an abandoned job's audio")
    os.utime(blobs.path(leftover), (old, old))
    assert blobs.purge(86400) == 1
    assert blobs.read(first) == b"photo"
    with pytest.raises(UnknownBlob):
        blobs.path(leftover)
