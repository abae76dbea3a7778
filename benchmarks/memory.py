"""Peak memory of a process tree, sampled in a background thread."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Peak memory of this process and its children (data-loader workers), sampled every 0.2 s.

    The sum of their PSS (proportional set size: a page shared by a forked worker and its parent counts
    half in each), so the figure is what the process tree holds. ``getrusage``'s ``ru_maxrss`` is not used:
    Linux carries the parent's high-water mark across ``exec``, so a fresh child reports the parent's peak.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in (me, *me.children(recursive=True)):
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRSS:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
