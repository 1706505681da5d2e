"""The generation worker: one thread owns the model and serves queued jobs, first in, first out.

Request handlers (on the event loop) submit a :class:`Job` and await its text deltas; the worker runs
the decode loop (:func:`minichatgpt.serving.engine.stream_text`) and hands each delta back to the loop.
The model is never run from two threads, and a job whose client went away is skipped or stopped at
its next token.
"""

import asyncio
import copy
import math
import queue
import threading
import time
from typing import AsyncIterator, List, Union

import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from .engine import GenerationOptions, TextDelta, stream_text
from .protocol import APIError


class Job:
    """One request waiting for, or being served by, the worker; deltas cross to the event loop."""

    def __init__(self, prompt_ids: List[int], options: GenerationOptions, loop: asyncio.AbstractEventLoop):
        self.prompt_ids, self.options, self.loop = prompt_ids, options, loop
        self.deltas: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()  # set by the worker when it is done with this job

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
    """The single thread that runs the model, serving queued jobs in arrival order."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_queue: int):
        self.model = model
        # A private tokenizer: Rust-backed fast tokenizers must not be used from two threads at once,
        # and prompts are encoded on another thread while this one decodes.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.mean_job_s = 1.0  # running mean of the time per job, for Retry-After
        self.thread = threading.Thread(target=self._run, name="minichatgpt-generation", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            retry_after = max(1, math.ceil(self.mean_job_s))  # a slot frees when the running job ends
            raise APIError(429, "the server is busy: too many requests are waiting; retry later",
                           code="queue_full", kind="server_busy",
                           headers={"Retry-After": str(retry_after)}) from None

    def pending(self) -> int:
        return self.jobs.qsize()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            started = time.monotonic()
            try:
                if not job.cancelled.is_set():
                    for delta in stream_text(self.model, self.tokenizer, job.prompt_ids, job.options,
                                             cancelled=job.cancelled.is_set):
                        job.put(delta)
            except Exception as error:  # reported to this request only; the worker keeps serving
                job.put(error)
            finally:
                job.finished.set()
            self.mean_job_s = 0.8 * self.mean_job_s + 0.2 * (time.monotonic() - started)
