"""Does this Python deadlock in ``sys._current_frames()``?  (CPython gh-106883)

Run it with the interpreter you deploy on::

    python tools/current_frames_deadlock.py [--seconds 60] [--threads 8]

On an affected CPython (3.11 before 3.11.12) it usually hangs within
seconds: one thread calls ``sys._current_frames()`` (as Dask's worker
profiler does every 10 ms), which holds the runtime's thread-list lock
while it allocates frame objects; an allocation starts a garbage
collection; the collection frees a ``threading.local``, whose cleanup takes
the same lock again.  That thread now waits for itself while holding the
GIL, and every other thread waits for the GIL.

A hung process cannot run Python, so the verdict comes from faulthandler's
C watchdog thread: if the main loop stops re-arming it for ``--stall``
seconds it dumps every thread's stack and exits with status 1.  Exit 0
means no deadlock was seen in the time given (not proof of absence).

Not a test of gpubackfill: the engine turns Dask's profiler off in the
clusters it starts, which removes the only caller of
``sys._current_frames()`` on its hot path.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import sys
import threading
import time


def _churn(stop: threading.Event) -> None:
    """Make garbage that only the cyclic collector frees, with a
    ``threading.local`` in every cycle, and deep enough frames that
    ``_current_frames()`` has frame objects to allocate."""
    def deep(n: int) -> None:
        if n:
            deep(n - 1)
            return
        for _ in range(200):
            loc = threading.local()
            loc.me = loc  # a reference cycle: freed by gc, inside whatever allocation runs it
            loc.junk = [object() for _ in range(5)]

    while not stop.is_set():
        deep(20)


def _sample(stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        sys._current_frames()
        counter[0] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to try (default 60)")
    ap.add_argument("--threads", type=int, default=8, help="garbage-making threads (default 8)")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="seconds without progress that count as a deadlock (default 10)")
    args = ap.parse_args()

    gc.set_threshold(50, 5, 5)  # collections often, so one lands inside the sampler's allocations
    stop = threading.Event()
    counter = [0]
    threads = [threading.Thread(target=_churn, args=(stop,), daemon=True) for _ in range(args.threads)]
    threads.append(threading.Thread(target=_sample, args=(stop, counter), daemon=True))
    print(f"Python {sys.version.split()[0]}: {args.threads} threads making cyclic garbage with "
          f"threading.local, one calling sys._current_frames(), for {args.seconds:.0f} s", flush=True)
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        # Re-armed each second; only a process whose Python threads are all
        # stuck lets it fire (it runs on a C thread that needs no GIL).
        faulthandler.dump_traceback_later(args.stall, exit=True)
        time.sleep(1.0)
    faulthandler.cancel_dump_traceback_later()
    stop.set()
    print(f"no deadlock in {args.seconds:.0f} s ({counter[0]:,} sys._current_frames() calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
