"""Dynamic batching: merge concurrent requests for one model version into one run.

A request (``rows``: an array whose first axis is the batch) waits in a bounded
queue.  A single worker thread takes the first waiting request, waits up to
``max_delay_s`` for more to arrive, runs everything it took (at most
``max_batch_size`` rows; a larger single request runs alone) in one call, and
hands each caller its own rows.

The worker only waits while more requests are known to be on their way
(callers :meth:`Batcher.announce` a request before decoding its images), so a
lone request on an idle server runs at once instead of paying the delay, and
under load requests that queued up during a run are merged without waiting.
With ``wait="full"`` it always waits the whole delay (Triton's behaviour),
which favours larger batches, e.g. on a GPU.  A cancelled request leaves the queue at once;
one whose deadline passed before its batch started is answered with an error
and never runs.

Example::

    batcher = Batcher(session_run, max_batch_size=16, max_delay_s=0.002, max_queue_size=256)
    batcher.start()
    outputs = batcher.submit(images).result()   # dict of name -> array with len(images) rows
    batcher.close()
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from histoedge.serving.errors import DeadlineExceededError, QueueFullError, ServerClosingError

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
BATCH_WAITS = ("arriving", "full")
BatchObserver = Callable[[int, list[float], float], None]  # rows, queue waits, run seconds
# With a batch's results, just before they are handed out: (merged rows, outputs, [(rows, note) per request]).
DeliveryObserver = Callable[[np.ndarray, Outputs, list[tuple[int, object]]], None]


@dataclass(eq=False)  # identity: deque.remove must not compare numpy arrays
class _Pending:
    rows: np.ndarray
    deadline: float | None
    note: object = None  # the caller's, handed back to ``on_delivered``
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    """Queue plus one worker thread for one model version.

    Args:
        run: called with the merged rows, returns named output arrays with as many rows.
        max_batch_size: most rows per ``run`` call (1 turns batching off).
        max_delay_s: longest time the first request waits for others.
        max_queue_size: most requests waiting; more raise :class:`QueueFullError`.
        name: used in thread names and messages.
        on_batch: called after each run with (rows, queue waits in s, run time in s).
        on_depth: called with the queue length whenever it changes.
        on_delivered: called in the worker with each batch's merged rows, outputs and each request's
            (row count, note), just before the callers get their rows; it should only queue work
            (e.g. monitoring's background assessment).
        wait: "arriving" (wait only for announced requests) or "full" (always wait the delay).
    """

    def __init__(self, run: Callable[[np.ndarray], Outputs], max_batch_size: int, max_delay_s: float,
                 max_queue_size: int, name: str = "model", on_batch: BatchObserver | None = None,
                 on_depth: Callable[[int], None] | None = None, wait: str = "arriving",
                 on_delivered: DeliveryObserver | None = None) -> None:
        if wait not in BATCH_WAITS:
            raise ValueError(f"wait must be one of {BATCH_WAITS}, not {wait!r}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.name = name
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._on_delivered = on_delivered
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0
        self._wait_full = wait == "full"
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def pending(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        with self._cond:
            return len(self._queue)

    def announce(self) -> None:
        """A request for this batcher is being prepared; :meth:`withdraw` when it is queued or dropped."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    def submit(self, rows: np.ndarray, deadline: float | None = None, note: object = None) -> Future:
        """Queue ``rows``; the future's result is a dict of output arrays for these rows only.

        Cancelling the future takes the request out of the queue.  ``note`` is handed back to
        ``on_delivered`` with this request's rows.
        """
        item = _Pending(rows=rows, deadline=deadline, note=note)
        with self._cond:
            if self._closed:
                raise ServerClosingError(f"model '{self.name}' is being unloaded; retry")
            if len(self._queue) >= self.max_queue_size:
                raise QueueFullError(
                    f"model '{self.name}' has {len(self._queue)} requests waiting, the limit "
                    f"(--max-queue-size); retry later")
            self._queue.append(item)
            self._depth_changed()
            self._cond.notify_all()
        item.future.add_done_callback(lambda future: self._discard(item))
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the ones queued, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _discard(self, item: _Pending) -> None:
        if not item.future.cancelled():
            return
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                return  # already taken into a batch
            self._depth_changed()
            self._cond.notify_all()

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    def _queued_rows(self) -> int:
        return sum(len(item.rows) for item in self._queue)

    def _take(self) -> list[_Pending] | None:
        """Wait for a batch to fill (or the delay to pass); None once closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            fill_by = self._queue[0].enqueued + self.max_delay_s
            while (self._queue and (self._arriving > 0 or self._wait_full) and not self._closed
                   and self._queued_rows() < self.max_batch_size):
                remaining = fill_by - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[_Pending] = []
            rows = 0
            while self._queue and (not taken or rows + len(self._queue[0].rows) <= self.max_batch_size):
                item = self._queue.popleft()
                taken.append(item)
                rows += len(item.rows)
            self._depth_changed()
            return taken

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            if taken:
                self._run_batch(taken)

    def _run_batch(self, taken: list[_Pending]) -> None:
        now = time.monotonic()
        live: list[_Pending] = []
        for item in taken:
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled while we were taking it
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExceededError(
                    f"deadline passed after {now - item.enqueued:.3f} s in the queue of '{self.name}'"))
                continue
            live.append(item)
        if not live:
            return
        batch = live[0].rows if len(live) == 1 else np.concatenate([item.rows for item in live])
        started = time.monotonic()
        try:
            outputs = self._run(batch)
        except Exception as error:  # noqa: BLE001 - every caller must get an answer
            log.error("model '%s': inference failed on a batch of %d rows: %s", self.name, len(batch), error)
            for item in live:
                item.future.set_exception(error)
            return
        elapsed = time.monotonic() - started
        if self._on_delivered is not None:  # before the answers, so what it queues precedes them
            try:
                self._on_delivered(batch, outputs, [(len(item.rows), item.note) for item in live])
            except Exception:  # noqa: BLE001 - the callers still get their answers
                log.exception("model '%s': the delivery observer failed", self.name)
        offset = 0
        for item in live:
            end = offset + len(item.rows)
            item.future.set_result({key: value[offset:end] for key, value in outputs.items()})
            offset = end
        if self._on_batch is not None:
            self._on_batch(len(batch), [started - item.enqueued for item in live], elapsed)
