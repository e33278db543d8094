"""A server's background work: evaluations run in threads, one job per key, a bounded number at once and waiting.

The dashboard computes the cheap first answer in the page and hands the rest (per-t curves, methods) to these
jobs, so that moving a slider, switching pages or closing the tab neither stops nor restarts it; a second
visitor asking for the same key gets the same job. A job ends when its work is done: nothing runs forever.
A waiting job nobody has looked at for `abandon_s` seconds is dropped when its turn comes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import DiffoodError
from .store import Progress

log = logging.getLogger(__name__)

WAITING, RUNNING, DONE, FAILED, CANCELLED, ABANDONED = "waiting", "running", "done", "failed", "cancelled", "abandoned"


class Cancelled(DiffoodError):
    """A job was stopped on request (raised from its progress callback, between batches)."""


class QueueFull(DiffoodError):
    """More jobs wait than the server allows."""


@dataclass
class Job:
    key: str
    label: str  # what it computes, for people: no server paths
    state: str = WAITING
    done: int = 0
    total: int = 0
    what: str = ""
    error: str = ""
    seen: float = field(default_factory=time.monotonic)
    cancel_requested: bool = False
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        return self.state in (WAITING, RUNNING)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def touch(self) -> None:
        """Someone is looking at this job's result: it is not abandoned."""
        self.seen = time.monotonic()

    def cancel(self) -> None:
        self.cancel_requested = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def progress(self, done: int, total: int, what: str) -> None:
        if self.cancel_requested:
            raise Cancelled(f"{self.label}: stopped on request")
        self.done, self.total, self.what = done, total, what


class Jobs:
    """At most `workers` jobs run at once and `waiting` wait; a key has one active job at a time."""

    def __init__(self, workers: int = 1, waiting: int = 8, abandon_s: float = 300.0):
        if workers < 1 or waiting < 0:
            raise DiffoodError(f"background jobs: workers must be at least 1 and waiting at least 0 "
                               f"(got {workers} and {waiting})")
        self.workers, self.limit, self.abandon_s = workers, waiting, abandon_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(workers):  # daemon threads: stopping the server does not wait for a job to finish
            threading.Thread(target=self._worker, name=f"diffood-job-{i}", daemon=True).start()

    def get(self, key: str) -> Job | None:
        return self._jobs.get(key)

    def listing(self) -> list[Job]:
        """The active jobs, running first, then waiting in the order they will run."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.active]
        return sorted(active, key=lambda j: j.state != RUNNING)

    def submit(self, key: str, label: str, work: Callable[[Progress], object]) -> Job:
        """Run work(progress) in the background, or return the active job of the same key. QueueFull when
        `waiting` jobs already wait."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.active:
                job.touch()
                return job
            waiting = sum(j.state == WAITING for j in self._jobs.values())
            running = sum(j.state == RUNNING for j in self._jobs.values())
            if running + waiting >= self.workers and waiting >= self.limit:
                raise QueueFull(f"the server runs {self.workers} background job{'s' * (self.workers > 1)} at once "
                                f"and {waiting} wait already; try again when one has finished")
            job = self._jobs[key] = Job(key, label)
        self._queue.put((job, work))
        return job

    def _worker(self) -> None:
        while True:
            self._run(*self._queue.get())

    def _run(self, job: Job, work: Callable[[Progress], object]) -> None:
        try:
            if job.cancel_requested:
                job.state = CANCELLED
                return
            if time.monotonic() - job.seen > self.abandon_s:
                job.state = ABANDONED  # nobody has asked for it since it was queued
                return
            job.state = RUNNING
            work(job.progress)
            job.state = DONE
        except Cancelled:
            job.state = CANCELLED
        except DiffoodError as e:  # bad input: said on the page that asks for the job
            job.error, job.state = str(e), FAILED
        except Exception as e:  # a bug: its traceback in the server's log, one line on the page
            log.exception("background job %s failed", job.label)
            job.error, job.state = f"{type(e).__name__}: {e}", FAILED
        finally:
            job.finished.set()

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until no job is active (tests, benchmarks); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        for job in list(self._jobs.values()):
            if not job.wait(None if end is None else max(0.0, end - time.monotonic())):
                return False
        return True


@lru_cache(maxsize=1)
def server_jobs() -> Jobs:
    """This process's jobs: $DIFFOOD_JOBS run at once (default 1), $DIFFOOD_JOB_QUEUE wait (default 8)."""
    try:
        workers, waiting = int(os.environ.get("DIFFOOD_JOBS", 1)), int(os.environ.get("DIFFOOD_JOB_QUEUE", 8))
    except ValueError as e:
        raise DiffoodError(f"DIFFOOD_JOBS and DIFFOOD_JOB_QUEUE must be whole numbers ({e})") from None
    return Jobs(workers, waiting)
