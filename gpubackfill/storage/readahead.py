"""One item in hand, the next on its way: ``read_ahead`` runs an iterator
in a thread while its consumer works on the item before.

Worth it where both sides spend their time outside the GIL: a chDB query
or insert, Arrow's readers and writers, the numba kernels.  The iterator
is advanced from one thread at a time; an exception it raises reaches the
consumer at the item where it happened."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_END = object()


def read_ahead(items: Iterable[T], name: str = "read-ahead") -> Iterator[T]:
    """``items``, each produced in a thread while the one before is used."""
    source = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        ahead = pool.submit(next, source, _END)
        while (item := ahead.result()) is not _END:
            ahead = pool.submit(next, source, _END)
            yield item  # type: ignore[misc]
