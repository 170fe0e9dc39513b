"""Progress lines with an ETA for long loops outside the training steps (zoo, caches, evaluation,
porting). Plain Python and logging, so a PyTorch process (the zoo) can use it without importing
clu, which imports TensorFlow."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger('kamal_jax')

EVERY_S = 10.0  # seconds between lines; a loop shorter than this prints nothing


def eta_text(done: float, total: float, elapsed: float) -> str:
    """'eta 12s' from the mean rate so far; '' before anything is done."""
    if done <= 0 or elapsed <= 0:
        return ''
    return f'eta {max(0.0, (total - done) * elapsed / done):.0f}s'


class Progress:
    """`update(n)` after each chunk of work; prints 'WHAT: done/total UNIT (pct), rate, eta' at most
    every `every_s` seconds, and a last line at the end when any line was printed."""

    def __init__(self, what: str, total: int, unit: str = 'items', *, every_s: float | None = None,
                 emit: Callable[[str], None] | None = None):
        self.what, self.total, self.unit = what, int(total), unit
        self.every_s = EVERY_S if every_s is None else every_s
        self.emit = emit or log.info
        self.done, self.printed = 0, 0
        self.t0 = self.t_last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        finished = self.done >= self.total
        if now - self.t_last >= self.every_s or (finished and self.printed):
            self.t_last = now
            self.printed += 1
            self.emit(self.line(now - self.t0))

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else float('nan')
        pct = 100.0 * self.done / self.total if self.total else 100.0
        tail = eta_text(self.done, self.total, elapsed) if self.done < self.total else f'took {elapsed:.1f}s'
        return f'{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s, {tail}'
