"""The driver sleeps until a future settles (a done-callback sets an event), not by polling."""

from __future__ import annotations

import threading
import time

from gpubackfill.engine.driver import _wait_some


class _Future:
    def __init__(self) -> None:
        self._done = False

    def done(self) -> bool:
        return self._done


def test_the_wait_returns_the_futures_already_done_without_sleeping():
    a, b = _Future(), _Future()
    b._done = True
    assert _wait_some([a, b], 60.0, threading.Event()) == [b]


def test_the_wait_wakes_when_a_future_settles_long_before_its_timeout():
    a, b = _Future(), _Future()
    settled = threading.Event()
    settled.set()  # left over from an earlier settle: must not end the wait with nothing

    def settle() -> None:
        time.sleep(0.2)
        b._done = True
        settled.set()  # what the future's done-callback does

    threading.Thread(target=settle).start()
    t0 = time.monotonic()
    assert _wait_some([a, b], 60.0, settled) == [b]
    assert time.monotonic() - t0 < 30  # woken by the event, not by the 60 s timeout


def test_the_wait_gives_up_with_nothing_at_its_timeout():
    assert _wait_some([_Future()], 0.05, threading.Event()) == []
