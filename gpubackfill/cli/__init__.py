"""The ``gpubackfill`` command line: parse, call the service, render.

``main`` (the group and store commands), ``jobs`` (job commands), ``dlq``,
``catalog`` (labels, sets), ``demo``, with ``_common`` (the service, the
console, option parsing) and ``run`` (a job in the foreground) below them.
"""

from .main import main

__all__ = ["main"]
