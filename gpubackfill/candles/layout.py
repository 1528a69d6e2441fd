"""How a candle file is laid out where the defaults cannot tell: ``Layout``
(``gpubackfill ingest --columns --date-format --sep --decimal``), and the
guesses ``files`` makes without it: the decimal mark, and whether a first
line is a header at all."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from .frames import PRICE_COLUMNS

# a time of day alone (03:04, 03:04:05.250), as in a separate time column
TIME_OF_DAY_RE = re.compile(r"\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?")

_FIELDS = ("time", "date", *PRICE_COLUMNS, "volume", "side")


@dataclass(frozen=True)
class Layout:
    """How to read a file that the defaults do not (``ingest --columns
    --date-format --sep --decimal``); every part is optional.

    - ``names``: the columns of a CSV file without a header line, in order
      (``date,time,open,high,low,close,volume`` for a MetaTrader 4 export);
      a name that is no field is a column to ignore.
    - ``mapping``: field -> the file's column, for columns whose names are
      not recognised (``time=Gmt time``); fields not mapped are matched as
      usual.
    - ``date_format``: a strftime format for text times (``%d.%m.%Y
      %H:%M:%S.%f``), applied to the date and time joined by a space when
      they are two columns.
    - ``sep`` and ``decimal``: a CSV file's field separator and decimal mark.
    """

    names: tuple[str, ...] | None = None
    mapping: tuple[tuple[str, str], ...] | None = None
    date_format: str | None = None
    sep: str | None = None
    decimal: str | None = None

    @classmethod
    def parse(cls, columns: str | None = None, date_format: str | None = None,
              sep: str | None = None, decimal: str | None = None) -> Layout:
        """From the options' text: ``columns`` is names (``a,b,c``) or a
        mapping (``time=Gmt time,open=Open``)."""
        names = mapping = None
        if columns is not None and columns.strip():
            parts = [p.strip() for p in columns.split(",")]
            if any("=" in p for p in parts):
                pairs = []
                for part in parts:
                    field, eq, column = (x.strip() for x in part.partition("="))
                    if not eq or not field or not column or field.lower() not in _FIELDS:
                        raise InvalidInput(
                            f"--columns: {part!r} is not FIELD=COLUMN with FIELD one of "
                            f"{', '.join(_FIELDS)}")
                    pairs.append((field.lower(), column))
                fields = [f for f, _ in pairs]
                if len(set(fields)) < len(fields):
                    raise InvalidInput(f"--columns maps a field twice: {columns!r}")
                mapping = tuple(pairs)
            else:
                if not all(parts):
                    raise InvalidInput(f"--columns has an empty name: {columns!r}")
                names = tuple(parts)
        if date_format is not None and "%" not in date_format:
            raise InvalidInput(f"--date-format {date_format!r} has no % directive "
                               f"(e.g. '%d.%m.%Y %H:%M:%S')")
        sep = {"tab": "\t", "\\t": "\t"}.get(sep, sep) if sep is not None else None
        if sep is not None and (len(sep) != 1 or sep in "\r\n\"0123456789."):
            raise InvalidInput(f"--sep must be one character such as ',', ';', '|' or 'tab', "
                               f"got {sep!r}")
        if decimal is not None and decimal not in (".", ","):
            raise InvalidInput(f"--decimal must be '.' or ',', got {decimal!r}")
        if sep is not None and decimal is not None and sep == decimal:
            raise InvalidInput(f"--sep and --decimal are both {sep!r}")
        return cls(names, mapping, date_format or None, sep, decimal)

    def for_parquet(self, path: Path) -> None:
        """Refuse what only a CSV file can have."""
        used = [o for o, v in (("--sep", self.sep), ("--decimal", self.decimal)) if v is not None]
        if self.names is not None:
            used.insert(0, "--columns NAMES (a headerless file's)")
        if used:
            raise InvalidInput(f"{path} is a Parquet file: {', '.join(used)} "
                               f"{'is' if len(used) == 1 else 'are'} for CSV files only"
                               + (" (name Parquet columns with --columns FIELD=COLUMN)"
                                  if self.names is not None else ""))


_DATA_FIELD_RE = re.compile(r"[+-]?[\d.,:/ T-]+")


def is_data(fields: list[str]) -> bool:
    """Whether a first line looks like a row of candles rather than a header."""
    return len(fields) >= 5 and all(_DATA_FIELD_RE.fullmatch(f.strip()) for f in fields)


def headerless_hint(path: Path, header: str, fields: list[str]) -> str:
    """What to say when the first line is data: the --columns that fits its shape."""
    names = ["time", "open", "high", "low", "close", "volume"]
    if len(fields) >= 2 and TIME_OF_DAY_RE.fullmatch(fields[1].strip()):
        names.insert(0, "date")
    extra = len(fields) - len(names)
    if extra > 0:
        names += [f"x{i}" for i in range(1, extra + 1)]
    else:
        names = names[:len(fields)]
    return (f"{path} has no header line (its first line is data: {header[:60]!r}); name its "
            f"columns with --columns, e.g. --columns {','.join(names)}")


def guess_decimal(sep: str, row: list[str], names: list[str], cols: dict[str, str]) -> str:
    """',' when the separator is not one and the first row's prices are
    written like ``1,0716`` (none with a point), else '.'."""
    if sep == "," or not row or len(row) != len(names):
        return "."
    values = dict(zip(names, row))
    prices = [values[cols[f]].strip() for f in PRICE_COLUMNS if cols[f] in values]
    if any("," in v for v in prices) and not any("." in v for v in prices):
        return ","
    return "."
