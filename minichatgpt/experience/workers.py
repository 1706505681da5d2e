"""Worker processes that run one function on request, each call bounded in time, and that always end.

Not ``multiprocessing.Pool``: its workers share one locked task queue, and ``Pool.terminate`` sends SIGTERM and
then waits without a limit. A worker that ignores SIGTERM (user code can install any handler, and a forked
worker inherits the trainer's stop handler until it resets it) or one killed while it holds the queue's lock
hangs the training process for good. Here each worker has its own pipe; one that hangs or dies is reported
by its index, and ``close`` asks, waits a moment, then SIGKILLs.
"""

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLOSE_GRACE_S = 1.0  # how long close waits for idle workers to exit by themselves before killing them
PARENT_CHECK_S = 1.0  # an idle worker checks this often that its parent still lives


class WorkerTimeout(RuntimeError):
    """Call ``index`` did not answer in time (its worker has been killed)."""

    def __init__(self, index: int):
        super().__init__(f"call {index} did not return in time")
        self.index = index


class WorkerDied(RuntimeError):
    """The worker of call ``index`` ended (a crash, ``os._exit``, a signal) before answering."""

    def __init__(self, index: int, exitcode: Optional[int]):
        super().__init__(f"the worker of call {index} exited with code {exitcode} before answering")
        self.index, self.exitcode = index, exitcode


def _serve(conn, job: Callable, parent_pid: int) -> None:
    """A worker's loop: ``job(*args)`` for each request, answered with ("ok", value) or ("error", exception).

    SIGINT is ignored: Ctrl-C reaches the whole process group, and the trainer, not its workers, decides when
    to stop. SIGTERM ends the worker (its default). Both were blocked across the fork and are unblocked only
    now, so no signal can reach a handler inherited from the trainer."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if "torch" in sys.modules:  # intra-op threads of a forked torch can deadlock; reward code needs one
        sys.modules["torch"].set_num_threads(1)
    while True:
        if not conn.poll(PARENT_CHECK_S):
            if os.getppid() != parent_pid:  # the trainer died without closing us
                return
            continue
        try:
            args = conn.recv()
        except EOFError:
            return
        if args is None:
            return
        try:
            answer = ("ok", job(*args))
        except Exception as e:  # noqa: BLE001 - the parent re-raises it
            answer = ("error", e)
        try:
            conn.send(answer)
        except Exception as e:  # noqa: BLE001 - an unpicklable value or exception
            conn.send(("error", RuntimeError(f"{type(e).__name__} sending the answer back: {e}")))


class WorkerPool:
    """``size`` forked processes that each run ``job``; started on first use, again after ``close``.

    Args:
        size: number of workers (at most this many calls run at once).
        job: a module-level function; its arguments and result cross a pipe (pickled).
    """

    def __init__(self, size: int, job: Callable):
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {size}")
        self.size, self.job = size, job
        self._workers: List[Tuple[multiprocessing.Process, multiprocessing.connection.Connection]] = []

    @property
    def running(self) -> bool:
        return bool(self._workers)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")  # no re-import of the user's script, as spawn would do
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # delivered to us after the forks
        try:
            while len(self._workers) < self.size:
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(target=_serve, args=(child_end, self.job, os.getpid()), daemon=True)
                process.start()
                child_end.close()
                self._workers.append((process, parent_end))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def map(self, calls: Sequence[tuple], timeout: float) -> list:
        """``job(*args)`` for each ``args`` of ``calls``, one call per worker, all within ``timeout`` seconds.

        Raises the first call's own exception; :class:`WorkerTimeout` or :class:`WorkerDied` (after killing
        every worker; the next ``map`` starts fresh ones) when a call hangs or its worker ends."""
        if len(calls) > self.size:
            raise ValueError(f"{len(calls)} calls for {self.size} workers")
        self._start()
        for index, ((process, conn), args) in enumerate(zip(self._workers, calls)):
            try:
                conn.send(tuple(args))
            except OSError:  # the worker ended while idle (killed from outside)
                self.close(kill=True)
                raise WorkerDied(index, process.exitcode) from None
        answers: List[Optional[tuple]] = [None] * len(calls)
        deadline = time.monotonic() + timeout
        waiting = {conn: i for i, (_, conn) in enumerate(self._workers[:len(calls)])}
        while waiting:
            ready = multiprocessing.connection.wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close(kill=True)
                raise WorkerTimeout(min(waiting.values()))
            for conn in ready:
                index = waiting.pop(conn)
                try:
                    answers[index] = conn.recv()
                except EOFError:
                    process = self._workers[index][0]
                    process.join(CLOSE_GRACE_S)
                    self.close(kill=True)
                    raise WorkerDied(index, process.exitcode) from None
        for status, value in answers:
            if status == "error":
                raise value
        return [value for _, value in answers]

    def close(self, kill: bool = False) -> None:
        """End every worker: ask idle ones to exit (unless ``kill``), then SIGKILL what is left; never hangs."""
        if not kill:
            for _, conn in self._workers:
                try:
                    conn.send(None)
                except OSError:  # already gone
                    pass
        deadline = time.monotonic() + (0.0 if kill else CLOSE_GRACE_S)
        for process, conn in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers = []
