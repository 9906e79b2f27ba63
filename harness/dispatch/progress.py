"""A progress bar over a grid's cells for the local executor: finished cells (done + failed) out of those to run,
with done / running / failed counts and tqdm's ETA from the rate of finished cells. Quiet when stderr is not a
terminal (tqdm's `disable=None`), so logs and CI output stay plain."""

from __future__ import annotations

from typing import Callable


class CellProgress:
    def __init__(self, total: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="cell", desc="cells", disable=None if enabled else True, dynamic_ncols=True)
        self.done = self.failed = self.running = 0
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix(done=self.done, running=self.running, failed=self.failed, refresh=True)

    def running_now(self, n: int) -> None:
        if n != self.running:
            self.running = n
            self._show()

    def finished(self, statuses: list[str]) -> None:
        """Cells that came back: `done`/`skipped`/`busy` count as done, `failed` as failed."""
        failed = sum(s == "failed" for s in statuses)
        self.failed += failed
        self.done += len(statuses) - failed
        self.bar.update(len(statuses))
        self._show()

    def printer(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, or tqdm.write while the bar is on screen (so lines do not tear the bar)."""
        if self.bar.disable or log is not print:
            return log
        return lambda msg: self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()
