"""One thread for every torch call a paint server makes.

Why a server needs it: torch's CPU kernels run on OpenMP, and each thread that starts a
parallel region gets its own team of OpenMP threads. An app whose edits run on whichever
worker of a thread pool is free (FastAPI's default for sync handlers) soon has several
teams on the same cores; libgomp then has more threads than cores and hands over work
through sleeps instead of spins. Measured on the 2-core CI-sized machine with the bundled
10-step scene-diffusion model, 2 torch threads: one sample takes 95 ms when every call runs
on one thread and 186-192 ms once a second thread has run torch, on either thread
(``benchmarks/paint_latency.py``, docs/paint.md "Latency"). So the engine is built, and every
edit, render and inversion runs, on one :class:`ModelThread`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


class ModelThread:
    """A single worker thread with the creating thread's torch thread count.

    ``call(fn, ...)`` runs ``fn`` there and waits (for start-up code); ``await run(fn, ...)``
    does the same from an async handler without blocking the event loop. Calls run one at
    a time in submission order, which is also what a shared generator needs.
    """

    def __init__(self, threads: int | None = None) -> None:
        count = threads if threads is not None else torch.get_num_threads()
        # torch's thread count is per OS thread under OpenMP: a new thread starts at the
        # machine's default, so pass the caller's on.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gdx-model",
                                            initializer=torch.set_num_threads, initargs=(count,))

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
