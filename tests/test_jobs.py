"""The server's background jobs: one per key, a bounded number at once and waiting, stoppable, failures kept."""

import threading

import pytest

from diffood.errors import DiffoodError
from diffood.jobs import Jobs, QueueFull


def _held(jobs: Jobs, key: str) -> tuple[threading.Event, threading.Event]:
    """A job that runs until released; (started, release)."""
    started, release = threading.Event(), threading.Event()

    def work(progress):
        started.set()
        release.wait(30)

    jobs.submit(key, key, work)
    return started, release


def test_one_job_per_key_and_a_bounded_queue():
    jobs, runs = Jobs(workers=1, waiting=1), []
    started, release = _held(jobs, "a")
    assert started.wait(10)
    b = jobs.submit("b", "b", lambda progress: runs.append("b"))
    assert jobs.submit("b", "b again", lambda progress: runs.append("b twice")) is b  # the same key: the same job
    with pytest.raises(QueueFull, match="1 wait already"):
        jobs.submit("c", "c", lambda progress: runs.append("c"))
    assert [j.key for j in jobs.listing()] == ["a", "b"] and [j.state for j in jobs.listing()] == ["running", "waiting"]
    release.set()
    assert jobs.wait_all(10) and runs == ["b"] and b.state == "done" and jobs.listing() == []


def test_a_job_stops_on_request_between_batches_and_a_failure_is_kept_with_its_message():
    jobs, batches, asked = Jobs(), [], threading.Event()

    def work(progress):
        asked.wait(10)
        for i in range(1000):
            progress(i, 1000, "t = 700")
            batches.append(i)
            if i == 5:
                job.cancel()

    job = jobs.submit("k", "k", work)
    asked.set()
    assert job.wait(10) and job.state == "cancelled" and len(batches) == 6

    def broken(progress):
        raise DiffoodError("no data for mnist")

    failed = jobs.submit("f", "f", broken)
    assert failed.wait(10) and failed.state == "failed" and failed.error == "no data for mnist"
    again = jobs.submit("f", "f", lambda progress: None)  # a finished key can be asked for again
    assert again is not failed and again.wait(10) and again.state == "done"


def test_a_waiting_job_nobody_looked_at_is_dropped_when_its_turn_comes():
    jobs, runs = Jobs(workers=1, abandon_s=0.05), []
    started, release = _held(jobs, "a")
    assert started.wait(10)
    left = jobs.submit("left", "left", lambda progress: runs.append("left"))
    watched = jobs.submit("watched", "watched", lambda progress: runs.append("watched"))
    threading.Event().wait(0.1)
    watched.touch()  # a page still shows it
    release.set()
    assert jobs.wait_all(10) and runs == ["watched"] and left.state == "abandoned"


def test_bad_limits_are_refused():
    with pytest.raises(DiffoodError, match="at least 1"):
        Jobs(workers=0)
