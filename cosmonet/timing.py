"""Wall-clock accumulators for the split of a simulation's time (FFT, paint, readout...)."""
import time
from collections import defaultdict
from contextlib import contextmanager


class Timers:
    """Named accumulating timers: ``with timers("fft"): ...``; seconds in ``timers.totals``."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.counts = defaultdict(int)

    @contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - t0
            self.counts[name] += 1

    def reset(self):
        self.totals.clear()
        self.counts.clear()

    def as_dict(self):
        return {k: {"seconds": self.totals[k], "calls": self.counts[k]} for k in sorted(self.totals)}
