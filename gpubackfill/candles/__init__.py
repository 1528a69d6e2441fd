"""Candles: in-memory frames and their validation (``frames``), the files
ingest reads (``files``), and realistic synthetic series (``synthetic``)."""

from .frames import PRICE_COLUMNS, defect_codes, describe, read_only, to_series, validate

__all__ = ["PRICE_COLUMNS", "defect_codes", "describe", "read_only", "to_series", "validate"]
