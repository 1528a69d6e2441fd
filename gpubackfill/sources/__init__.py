"""Sources: candles where they already live (a ClickHouse table or view, or
a table function over files), read in place with a mapping of their columns
to ours.  ``source.py`` is a definition and its SQL, ``sql.py`` the checks
that keep user text out of statements, ``catalog.py`` adding and checking."""

from .source import Source

__all__ = ["Source"]
