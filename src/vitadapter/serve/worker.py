"""Admission and the inference thread: a bounded number of requests in the service, their
jobs run one at a time off the event loop."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Ticket:
    """One admitted request's place; given back exactly once, however often released."""

    def __init__(self, leave: Callable[[], None]) -> None:
        self._leave = leave
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._leave()


class InferenceQueue:
    """At most ``capacity`` requests admitted at once, whether reading their upload, waiting
    or running; their jobs run one at a time on a dedicated thread.

    A job that outlives its request's timeout keeps its place until it really ends (a running
    forward pass cannot be interrupted), so the bound holds for the work, not only for the
    responses; a job still waiting when its request times out never starts.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the queue needs room for at least one request, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._admitted = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitadapter")
        self._job_seconds = 1.0  # moving average, for Retry-After

    @property
    def in_progress(self) -> int:
        """Requests admitted now (uploading, waiting or running)."""
        return self._admitted

    def admit(self) -> Ticket | None:
        """A place for a new request, or None when the queue is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                return None
            self._admitted += 1
        return Ticket(self._leave)

    def _leave(self) -> None:
        with self._lock:
            self._admitted -= 1

    def retry_after(self) -> int:
        """Seconds after which a place is likely to be free: one job's typical duration."""
        return max(1, math.ceil(self._job_seconds))

    async def run(self, ticket: Ticket, job: Callable[[], T]) -> T:
        """Run ``job`` on the inference thread and wait for it. The ticket is released when the
        job ends, or when it is cancelled before starting (the caller gave up waiting)."""
        future = self._executor.submit(self._timed, job)
        future.add_done_callback(lambda _: ticket.release())
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a job still waiting never starts; a running one finishes
            raise

    def _timed(self, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.perf_counter() - start)

    def shutdown(self) -> None:
        """Drop the waiting jobs; a running one finishes in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)

