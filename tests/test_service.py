"""The shared job service: admission, per-user order, fairness across users, metrics."""

import asyncio
import contextlib
import time

import pytest

from bots.service import Admission, ReplyService
from pipeline.cancel import TookTooLong
from pipeline.errors import EmptyText


def test_one_busy_user_cannot_starve_another():
    service = ReplyService(max_pending=5, rate_limit=100)
    finished: list[str] = []

    def job(name: str) -> str:
        time.sleep(0.15)
        finished.append(name)
        return name

    async def main() -> None:
        tasks = []
        for i in range(4):  # Ann sends four messages at once
            assert service.admit("ann")[0] in (Admission.RUN_NOW, Admission.QUEUED)
            tasks.append(asyncio.create_task(service.run("ann", job, f"ann{i}")))
        await asyncio.sleep(0.05)
        assert service.admit("bob")[0] is Admission.RUN_NOW
        tasks.append(asyncio.create_task(service.run("bob", job, "bob0")))
        await asyncio.gather(*tasks)

    asyncio.run(main())
    service.shutdown()
    assert [n for n in finished if n.startswith("ann")] == ["ann0", "ann1", "ann2", "ann3"]  # in order
    assert finished.index("bob0") <= 2  # Bob waits for at most Ann's running job and one more


def test_admission_queue_bound_rate_limit_and_metrics():
    now = [0.0]
    service = ReplyService(max_pending=2, rate_limit=3, rate_window_s=60, clock=lambda: now[0])
    assert service.admit("cy") == (Admission.RUN_NOW, 0.0)
    assert service.admit("cy") == (Admission.QUEUED, 0.0)
    assert service.admit("cy") == (Admission.BUSY, 0.0)
    assert service.queue_depth() == 2

    async def finish_both() -> None:
        await service.run("cy", lambda: None)

        def refuse() -> None:
            raise EmptyText()

        with contextlib.suppress(EmptyText):
            await service.run("cy", refuse)

    asyncio.run(finish_both())
    assert service.queue_depth() == 0
    assert service.admit("cy")[0] is Admission.RUN_NOW  # the third admission in this minute
    verdict, retry = service.admit("cy")
    assert verdict is Admission.RATE_LIMITED and retry == 60
    now[0] = 61
    assert service.admit("cy")[0] is Admission.QUEUED  # the window moved on; one job still pending
    text = service.metrics.render().decode()
    for line in (
        'talktwin_jobs_total{outcome="ok"} 1.0',
        'talktwin_jobs_total{outcome="user_error"} 1.0',
        'talktwin_jobs_total{outcome="busy"} 1.0',
        'talktwin_jobs_total{outcome="rate_limited"} 1.0',
    ):
        assert line in text
    service.shutdown()


def test_a_full_service_says_when_to_come_back():
    service = ReplyService(max_pending=2, max_queue=3, rate_limit=100)
    for name in ("a", "b", "c"):
        assert service.admit(name)[0] is Admission.RUN_NOW
    verdict, retry = service.admit("d")
    assert verdict is Admission.FULL and retry == 3 * 6.0  # three jobs ahead, ~6 s each by default
    assert 'talktwin_jobs_total{outcome="full"} 1.0' in service.metrics.render().decode()
    service.shutdown()


def test_timeouts_are_counted_by_the_stage_that_overran():
    service = ReplyService(max_pending=2, rate_limit=100)

    def overrun() -> None:
        raise TookTooLong("render took over 120 s", stage="render")

    async def main() -> None:
        assert service.admit("dee")[0] is Admission.RUN_NOW
        with pytest.raises(TookTooLong):
            await service.run("dee", overrun)

    asyncio.run(main())
    assert 'talktwin_jobs_total{outcome="timeout_render"} 1.0' in service.metrics.render().decode()
    service.shutdown()
