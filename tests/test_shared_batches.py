"""Frames of concurrent replies drawn in shared batches: each reply gets exactly its own frames."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_settings
from pipeline.render.factory import build_renderer, renders_on_gpu
from pipeline.render.shared_batches import SharedBatchRenderer
from pipeline.render.warp import WarpRenderer
from tests.test_render import AVATAR, FPS, HOPPER, SEED, SIZE, _speech


@pytest.fixture(scope="module")
def inner() -> WarpRenderer:
    return WarpRenderer(device="cpu", batch=8, seed=SEED)


def _frames(renderer, avatar, speech, n: int, start: float) -> np.ndarray:
    return np.concatenate(list(renderer.render(avatar, speech, fps=FPS, start_time=start, n_frames=n)))


def test_concurrent_replies_share_draws_and_never_get_each_others_frames(inner: WarpRenderer):
    shared = SharedBatchRenderer(inner)
    mine, other = inner.prepare(AVATAR.read_bytes(), SIZE), inner.prepare(HOPPER.read_bytes(), SIZE)
    jobs = [  # three replies with the default avatar (two identical), one with another photo
        (mine, _speech(0.3, 0.9), 30, 0.0),
        (mine, _speech(0.6, 0.4), 27, 1.3),
        (other, _speech(0.3, 0.9), 30, 0.0),
        (mine, _speech(0.3, 0.9), 30, 0.0),
    ]
    expected = [_frames(inner, *job) for job in jobs]
    results: list[np.ndarray | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def reply(i: int) -> None:
        start.wait()
        results[i] = _frames(shared, *jobs[i])

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for got, want in zip(results, expected, strict=True):
        assert got is not None and got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float summation order only
    assert not np.array_equal(results[0], results[2])  # a different face really is different
    stats = shared.stats
    assert stats.chunks == sum(-(-n // inner.batch) for _, _, n, _ in jobs)
    assert stats.most_chunks_in_one_draw > 1 and stats.draws < stats.chunks  # replies shared draws
    shared.close()


def test_a_failed_draw_fails_only_its_reply(inner: WarpRenderer):
    shared = SharedBatchRenderer(inner)
    avatar = inner.prepare(AVATAR.read_bytes(), SIZE)
    broken = shared._submit(avatar, torch.zeros((4, 3)))  # controls of the wrong shape
    with pytest.raises((RuntimeError, IndexError)):
        broken.done.result(30)
    frames = _frames(shared, avatar, _speech(0.2, 0.3), 12, 0.0)
    assert frames.shape == (12, SIZE, SIZE, 3)  # the device thread lives on
    shared.close()


def test_shared_batches_are_used_on_cuda_or_when_asked(tmp_path: Path):
    def built(share: str):
        env = {"TALKTWIN_PATHS__DATA_DIR": str(tmp_path), "TALKTWIN_RENDER__SHARE_BATCHES": share}
        return build_renderer(load_settings(environ=env | {"TALKTWIN_RENDER__DEVICE": "cpu"}))

    shared = built("on")
    assert isinstance(shared, SharedBatchRenderer)
    shared.close()
    assert isinstance(built("auto"), WarpRenderer) and not renders_on_gpu(built("auto"))  # a CPU here
    assert isinstance(built("off"), WarpRenderer)
