"""Progress that reads well both in a terminal and in a log file.

In a terminal, a tqdm bar redraws itself in place with carriage returns. In a log (a file,
`ray job submit`'s job log, CI) every redraw survives as its own line, so there `progress_bar`
returns `LogLines` instead: the same interface, one plain line per milestone (by default every
5 % of the total; training passes one milestone per epoch), each with tqdm's rate and ETA.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_MILESTONES = 20  # lines per bar in a log: one per 5 %


class LogLines:
    """A tqdm look-alike for logs: `update`, `set_postfix(_str)`, `set_description`, `n`,
    `total` (settable, as a bar over Ray trainers learns it late), `close` and `with`."""

    def __init__(
        self,
        *,
        total: float | None,
        desc: str,
        unit: str,
        initial: float = 0,
        milestones: int = LOG_MILESTONES,
        file: TextIO | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.milestones = max(1, milestones)
        self.file = file
        self.postfix = ""
        self.started = time.monotonic()
        self.last_milestone: int | None = None
        self.closed = False

    def _milestone(self) -> int | None:
        if not self.total:
            return None  # no total yet: a line per update would flood the log, so wait
        return int(self.n * self.milestones // self.total)

    def _write(self) -> None:
        line = tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self.started,
            prefix=self.desc,
            unit=self.unit,
            postfix=self.postfix or None,
            initial=self.initial,
            ncols=0,  # no bar graphic: the numbers only
        )
        stream = self.file if self.file is not None else sys.stderr
        print(line, file=stream, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        milestone = self._milestone()
        if milestone is not None and milestone != self.last_milestone:
            self.last_milestone = milestone
            self._write()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **values: Any) -> None:
        items = dict(ordered_dict or {}, **values)
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._milestone() != self.last_milestone or self.last_milestone is None:
            self._write()  # the final count, unless the last milestone just said it

    def __enter__(self) -> LogLines:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def progress_bar(
    *,
    total: float | None,
    desc: str,
    unit: str,
    disable: bool = False,
    initial: float = 0,
    milestones: int = LOG_MILESTONES,
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar when `file` (default stderr) is a terminal, else `LogLines` writing about
    `milestones` lines. `disable`: a bar that prints nothing (`--quiet`)."""
    stream = file if file is not None else sys.stderr
    if disable or stream.isatty():
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=stream
        )
    return LogLines(
        total=total, desc=desc, unit=unit, initial=initial, milestones=milestones, file=stream
    )
