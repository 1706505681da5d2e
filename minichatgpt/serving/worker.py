"""The generation worker: one thread owns the model and runs one batch that requests join and leave.

Request handlers (on the event loop) submit a :class:`Job` to a bounded queue and await its text
deltas. Between two decode steps the worker moves waiting jobs into the running batch (up to
``max_batch`` rows; their prompts are prefilled together), drops the jobs whose client went away, then
runs one step of the decode core (:class:`minichatgpt.nn.decoding.DecodeBatch`): one token for every
running request, each with its own sampling parameters, stop strings and seed. A job that finishes
leaves at that token boundary and its place is free for the next waiting one. The model is never run
from two threads. A full queue answers 429 with Retry-After.
"""

import asyncio
import copy
import math
import queue
import threading
import time
from typing import AsyncIterator, Dict, List, Tuple, Union

import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from ..nn.decoding import DecodeBatch
from .engine import GenerationOptions, TextDelta, decode_request, stop_token_ids, text_delta
from .protocol import APIError

DEFAULT_MAX_BATCH = 8


class Job:
    """One request waiting for, or being served by, the worker; deltas cross to the event loop."""

    def __init__(self, prompt_ids: List[int], options: GenerationOptions, loop: asyncio.AbstractEventLoop):
        self.prompt_ids, self.options, self.loop = prompt_ids, options, loop
        self.deltas: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()  # set by the worker when it is done with this job
        self.started = 0.0  # when it joined the running batch (monotonic seconds)

    def put(self, item: Union[TextDelta, BaseException]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)

    async def stream(self) -> AsyncIterator[TextDelta]:
        """The reply's deltas, ending with the one that has a finish reason."""
        while True:
            item = await self.deltas.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class GenerationWorker:
    """The single thread that runs the model: a continuous batch of at most ``max_batch`` jobs."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_queue: int,
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.model, self.max_batch = model, max_batch
        # A private tokenizer: Rust-backed fast tokenizers must not be used from two threads at once,
        # and prompts are encoded on another thread while this one decodes.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.stop_ids = stop_token_ids(model, self.tokenizer)
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.mean_job_s = 1.0  # running mean of the time per job, for Retry-After
        self.batch = DecodeBatch(model)
        self.running: Dict[int, Job] = {}  # id(job) -> job, the jobs in the batch
        self.thread = threading.Thread(target=self._run, name="minichatgpt-generation", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            retry_after = max(1, math.ceil(self.mean_job_s))  # a slot frees when a running job ends
            raise APIError(429, "the server is busy: too many requests are waiting; retry later",
                           code="queue_full", kind="server_busy",
                           headers={"Retry-After": str(retry_after)}) from None

    def pending(self) -> int:
        return self.jobs.qsize()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _take(self) -> Tuple[List[Job], bool]:
        """Waiting jobs that fit in the batch (blocking while it is empty), and whether to stop."""
        taken = []
        while len(self.running) + len(taken) < self.max_batch:
            try:
                job = self.jobs.get(block=not (self.running or taken))
            except queue.Empty:
                break
            if job is None:
                return taken, True
            if job.cancelled.is_set():  # its client left while it waited
                job.finished.set()
            else:
                taken.append(job)
        return taken, False

    def _join(self, jobs: List[Job]) -> None:
        requests = []
        for job in jobs:
            try:
                requests.append(decode_request(self.model, self.tokenizer, job.prompt_ids, job.options,
                                               self.stop_ids, key=id(job)))
            except Exception as error:  # reported to this request only
                self._end(job, error)
        joining = [job for job in jobs if not job.finished.is_set()]
        try:
            self.batch.add(requests)
        except Exception as error:  # a failed prefill leaves the running rows untouched
            for job in joining:
                self._end(job, error)
            return
        for job in joining:
            job.started = time.monotonic()
            self.running[id(job)] = job

    def _end(self, job: Job, last: Union[TextDelta, BaseException]) -> None:
        self.running.pop(id(job), None)  # before the reply ends, so that /health never counts it after
        job.put(last)
        job.finished.set()
        if job.started:
            self.mean_job_s = 0.8 * self.mean_job_s + 0.2 * (time.monotonic() - job.started)

    def _step(self) -> None:
        gone = [key for key, job in self.running.items() if job.cancelled.is_set()]
        for request, event in self.batch.cancel(gone):
            self._end(self.running[request.key], text_delta(event))
        if not len(self.batch):
            return
        try:
            events = self.batch.step()
        except Exception as error:  # reported to the requests of this batch; the worker keeps serving
            self.batch = DecodeBatch(self.model)
            for job in list(self.running.values()):
                self._end(job, error)
            return
        for request, event in events:
            job = self.running[request.key]
            if event.finish_reason is not None:
                self._end(job, text_delta(event))
            elif event.text:
                job.put(text_delta(event))

    def _run(self) -> None:
        while True:
            jobs, stopping = self._take()
            if stopping:
                for job in jobs + list(self.running.values()):
                    self._end(job, TextDelta("", 0, "cancelled"))
                return
            if jobs:
                self._join(jobs)
            self._step()
