"""What a first touch of memory costs on this machine: fresh pages against
pages freed moments before.

A process touches twice ``--mib`` MiB in huge pages and exits; ``--idle``
seconds later a fresh process maps ``--mib`` MiB of anonymous memory and
writes one byte in every 4 KiB page, and another does the same at once.
It prints wall and system CPU per pass, per GiB and per page fault, with
and without transparent huge pages (``madvise``).

On a virtual machine whose guest reports freed pages to its host (Linux's
free page reporting: ``page_reporting.page_reporting_order`` on the kernel's
command line), memory that stays free for a few seconds goes back to the
host, and the next touch pays the host's fault as well as the guest's.
In huge pages the pass after the idle one shows it every time.  In 4 KiB
pages the kernel serves the touch from the small free blocks it has at
hand, which were never handed back, until they run out (as after a large
process exits): then the first large job of the next process pays it too
(bench/RESULTS.md, "What a fresh process's memory costs here").
Run from the repository root::

    python bench/first_touch.py --mib 1024 --idle 10
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import report as _report  # bench/report.py

PAGE = 4096


def touch(mib: int, huge: bool) -> tuple[float, float, int]:
    """Wall s, system CPU s and minor faults to write one byte a page of a
    fresh ``mib`` MiB mapping."""
    m = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge and hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    pages = np.frombuffer(m, dtype=np.uint8)[::PAGE]
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    pages[:] = 1
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    del pages
    m.close()
    return wall, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--idle", type=float, default=10.0, help="seconds with the memory free before the first pass")
    p.add_argument("--child", choices=("4k", "thp"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(touch(args.mib, args.child == "thp")))
        return 0
    cmdline = Path("/proc/cmdline").read_text().split() if Path("/proc/cmdline").exists() else []
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    print(f"command: {' '.join(sys.argv)}")
    print(f"kernel command line, page reporting: "
          f"{[a for a in cmdline if 'page_reporting' in a] or 'not set'}; "
          f"transparent huge pages: {thp.read_text().strip() if thp.exists() else 'n/a'}")

    def child(mib: int, mode: str) -> tuple[float, float, int]:
        out = subprocess.run([sys.executable, __file__, "--mib", str(mib), "--child", mode],
                             capture_output=True, text=True, check=True)
        return tuple(json.loads(out.stdout))

    rows = []
    for mode in ("4k", "thp"):
        # Each pass is a process of its own, as each benchmark job is: the
        # first lands on memory a larger process freed --idle seconds before,
        # the second on the memory the first freed as it exited.  That larger
        # process holds its memory in huge pages, as numpy does with every
        # array of 4 MiB or more: freed, they come back as blocks large
        # enough for the guest to report to the host.
        child(2 * args.mib, "thp")
        time.sleep(args.idle)
        for when in (f"{args.idle:.0f} s before", "right before"):
            wall, sys_s, faults = child(args.mib, mode)
            gib = args.mib / 1024
            rows.append([("2 MiB (THP)" if mode == "thp" else "4 KiB"), when, f"{wall:.3f}", f"{sys_s:.3f}",
                         f"{wall / gib:.2f}", f"{faults:,}", f"{1e6 * wall / max(faults, 1):.1f}"])
    _report.print_table(["pages", "memory freed", "wall s", "system CPU s", "s per GiB", "minor faults",
                         "us per fault"], rows,
                        title=f"First touch of {args.mib} MiB in a fresh process, of memory freed "
                              f"{args.idle:.0f} s before, and again at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
