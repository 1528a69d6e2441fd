"""Shared output helpers of the benchmark scripts: plain-text tables,
number formatting, and facts about the machine they ran on."""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Any


def _numeric(cell: str) -> bool:
    return cell == "" or cell.lstrip("<>=~ -")[:1].isdigit()


def print_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Plain-text table; columns of numbers are right-aligned, others left."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [i > 0 and all(_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right)).rstrip()

    if title:
        print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in cells:
        print(line(r))


def human(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {suffix}"
    return f"{v:.3g}"


def size_name(n: int) -> str:
    return human(n).replace(" ", "")


def verdict(ok: bool | None, quick: bool, why: str = "") -> str:
    """A target's result cell: PASS or MISS, n/a when not judged (and why)."""
    if quick:
        return "n/a (quick)"
    if ok is None:
        return f"n/a ({why})"
    return "PASS" if ok else "MISS"


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False if unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


class RssSampler:
    """Sample this process's RSS every ``interval`` seconds; keep the max."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.before = self._proc.memory_info().rss
        self.peak = self.before
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.samples += 1
            time.sleep(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
