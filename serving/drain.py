"""Requests in progress, so a shutdown can finish them before the transport closes.

gRPC's own ``server.stop(grace)`` cancels calls that arrived but were not yet
handed to a handler thread (clients see CANCELLED).  So the server first closes
the :class:`Drain`: new inference requests are refused with UNAVAILABLE (a
retryable code, so clients go to another replica) while the requests already
inside finish; only when none is left does the transport stop.

Example::

    drain = Drain()
    with drain.request():          # raises ServerClosingError once closing
        ...
    drain.close(timeout=10)        # True when every request finished in time
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from histoedge.serving.errors import ServerClosingError


class Drain:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def request(self, refuse_when_closing: bool = True):
        """Count one request while it runs; refuse it (ServerClosingError) once closing."""
        with self._cond:
            if self._closing and refuse_when_closing:
                raise ServerClosingError("the server is shutting down; retry (another replica)")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self, timeout: float, settle: float = 0.5) -> bool:
        """Refuse new requests and wait for the running ones; True if all finished in ``timeout``.

        ``settle`` seconds of refusing come first, so calls already on their way are
        answered (UNAVAILABLE) instead of being cut off by the transport's shutdown.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: False, min(settle, timeout))
            return self._cond.wait_for(lambda: self._active == 0, max(0.0, deadline - time.monotonic()))
