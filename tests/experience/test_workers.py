"""The worker pool behind reward functions: answers in call order, errors re-raised, and workers that
always end (on close, on a timeout, and when the process that started them dies)."""

import os
import threading
import time

import pytest

from minichatgpt.experience.workers import WorkerDied, WorkerPool, WorkerTimeout


def _power(x, p):
    if p < 0:
        raise ValueError(f"negative power {p}")
    time.sleep(0.2 if x == 0 else 0.0)  # the first call answers last
    return x ** p


def _unpicklable(_):
    return threading.Lock()


def _sleep(seconds):
    time.sleep(seconds)
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.timeout(60)
def test_answers_come_back_in_call_order_and_errors_keep_their_type():
    pool = WorkerPool(3, _power)
    try:
        assert pool.map([(0, 2), (3, 2), (2, 3)], timeout=30) == [0 ** 2, 3 ** 2, 2 ** 3]
        with pytest.raises(ValueError, match="negative power -1"):
            pool.map([(1, 1), (2, -1)], timeout=30)
        assert pool.running and pool.map([(5, 2)], timeout=30) == [25]  # an error does not end the workers
        with pytest.raises(RuntimeError, match="TypeError sending the answer back"):
            WorkerPool(1, _unpicklable).map([(0,)], timeout=30)
        with pytest.raises(ValueError, match="4 calls for 3 workers"):
            pool.map([(1, 1)] * 4, timeout=30)
    finally:
        pool.close()
    assert not pool.running
    with pytest.raises(ValueError, match="at least 1 worker"):
        WorkerPool(0, _power)


@pytest.mark.timeout(60)
def test_a_timeout_names_the_late_call_and_kills_every_worker():
    pool = WorkerPool(2, _sleep)
    pids = pool.map([(0,), (0,)], timeout=30)
    with pytest.raises(WorkerTimeout) as e:
        pool.map([(0,), (600,)], timeout=0.5)
    assert e.value.index == 1 and not pool.running and not any(_alive(pid) for pid in pids)
    assert set(pool.map([(0,), (0,)], timeout=30)).isdisjoint(pids)  # fresh workers
    pool.close()


@pytest.mark.timeout(60)
def test_a_worker_killed_from_outside_is_reported_not_waited_on():
    pool = WorkerPool(1, _sleep)
    (pid,) = pool.map([(0,)], timeout=30)
    os.kill(pid, 9)
    time.sleep(0.2)
    with pytest.raises(WorkerDied) as e:
        pool.map([(0,)], timeout=30)
    assert e.value.index == 0 and e.value.exitcode == -9 and not pool.running


@pytest.mark.timeout(60)
def test_idle_workers_exit_when_their_parent_dies(tmp_path):
    """A trainer killed with SIGKILL cannot close its workers; they notice and exit by themselves."""
    pid_file = tmp_path / "worker.pid"
    child = os.fork()
    if child == 0:  # the "trainer": start a worker, report its pid, die without closing it
        try:
            pool = WorkerPool(1, _sleep)
            pid_file.write_text(str(pool.map([(0,)], timeout=30)[0]))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)
