"""Chunk deadlines: a stuck chunk is taken back instead of hanging a job.

Whatever the cause (a statement that never returns, a deadlocked library,
a wedged device), a chunk past its deadline stops having its lease renewed
and is failed as one attempt: it goes back to the queue and is dead-lettered
after the usual number of attempts, and its late write, if it ever comes,
is fenced off by the lease token.  The stack of the stuck thread goes to the
log and the job's events, so the cause can be read rather than guessed.
"""

from __future__ import annotations

import faulthandler
import statistics
import tempfile

# Ten times a typical chunk is far outside normal variation (a chunk split
# for memory, a cold kernel cache) while still bounding a hang.
MEDIAN_FACTOR = 10.0


def chunk_deadline(fixed: float, floor: float, durations: list[float]) -> float:
    """Seconds a chunk may run: ``fixed`` when set (> 0), else
    ``MEDIAN_FACTOR`` times the median of the job's chunk times so far,
    never less than ``floor``."""
    if fixed > 0:
        return fixed
    if not durations:
        return floor
    return max(floor, MEDIAN_FACTOR * statistics.median(durations))


def thread_stack(ident: int) -> str:
    """The Python stack of thread ``ident``, as faulthandler prints it.

    faulthandler walks the thread states without allocating Python objects
    or taking the runtime's thread-list lock, so unlike
    ``sys._current_frames()`` it cannot deadlock on an affected CPython.
    """
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        text = f.read()
    tag = f"0x{ident:016x}"
    for block in text.split("\n\n"):
        head = block.lstrip().splitlines()[0] if block.strip() else ""
        if tag in head:
            return block.strip()
    return text.strip()  # the thread has gone: everything is better than nothing
