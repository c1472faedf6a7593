"""The clock this core really runs at, measured: a chain of dependent 1-cycle adds, timed.

The x86 validation converts estimated cycles to time; the nominal clock of a cloud VM
(``/proc/cpuinfo``) is not what the core runs at under turbo, so it is measured the way cycle
estimates assume: 1e8 dependent register ``add``s take 1e8 cycles (register, not immediate, adds:
Golden Cove cores fold chains of immediate adds at rename), timed in thread CPU time so that a busy
machine preempting the process does not read as a slow clock. Best of 20 repeats.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from bhvit_export.errors import TargetError

_SOURCE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  unsigned long x = 0, one = 1; double best = 1e9;
  for (int r = 0; r < 20; ++r) {
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < 10000000; ++i)
      __asm__ volatile("add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\t"
                       "add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0" : "+r"(x) : "r"(one));
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    double t = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
    if (t < best) best = t;
  }
  printf("%.4f %lu\n", 1e8 / best / 1e9, x);
  return 0;
}
"""


def measured_ghz() -> float:
    """GHz of the current core (x86-64 hosts only)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise TargetError("no host C compiler to measure the clock: install it with `apt-get install gcc`")
    with tempfile.TemporaryDirectory(prefix="bhvit-clock-") as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_SOURCE)
        subprocess.run([cc, "-O1", str(src), "-o", str(exe)], check=True, capture_output=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])
