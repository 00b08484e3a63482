"""Progress of a long training: one line per stage with the elapsed time, and Spark's job progress.

`StageLog` is the `log` callback of `zerorec.pipeline.train_recommender` (and of the Spark engine):
each call starts a stage and prints `[HH:MM:SS] +elapsed  stage  (previous stage: seconds)`.
`SparkProgress` is a daemon thread that prints the active Spark stages (tasks done / total) every
few seconds while Spark works, through `SparkContext.statusTracker()`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

Emit = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StageLog:
    """Callable progress sink: a line per stage with the time since the start and the last stage's
    duration; `summary()` lists every stage's seconds."""

    def __init__(self, emit: Emit = _stderr, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.clock = clock
        self.start = clock()
        self.stages: list[tuple[str, float]] = []  # (stage, start offset)

    def __call__(self, stage: str) -> None:
        now = self.clock() - self.start
        took = f"  (previous stage {now - self.stages[-1][1]:.1f}s)" if self.stages else ""
        self.stages.append((stage, now))
        self.emit(f"[{time.strftime('%H:%M:%S')}] +{now:7.1f}s  {stage}{took}")

    def summary(self) -> dict[str, float]:
        """Seconds per stage (the last one runs until now); a repeated stage name adds up."""
        end = self.clock() - self.start
        out: dict[str, float] = {}
        bounds = [s[1] for s in self.stages[1:]] + [end]
        for (stage, begin), finish in zip(self.stages, bounds, strict=True):
            out[stage] = out.get(stage, 0.0) + round(finish - begin, 3)
        return out


class SparkProgress:
    """Prints `spark: stage N (name) tasks done/total, R running` for the active stages every
    `period_s` while any is active (nothing when Spark is idle). A context manager."""

    def __init__(self, spark_context: Any, emit: Emit = _stderr, period_s: float = 5.0) -> None:
        self.tracker = spark_context.statusTracker()
        self.emit = emit
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
        self.lines = 0

    def snapshot(self) -> list[str]:
        """One description per active stage, now."""
        out = []
        for stage_id in sorted(self.tracker.getActiveStageIds()):
            info = self.tracker.getStageInfo(stage_id)
            if info is None:
                continue
            out.append(
                f"stage {stage_id} ({info.name.split(' at ')[0]}) tasks "
                f"{info.numCompletedTasks}/{info.numTasks}, {info.numActiveTasks} running"
            )
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                active = self.snapshot()
            except Exception:  # the context stopped under us: progress is best effort
                return
            if active:
                self.lines += 1
                self.emit(f"[{time.strftime('%H:%M:%S')}]   spark: " + "; ".join(active))

    def __enter__(self) -> SparkProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 1)


def stream_emit(stream: TextIO) -> Emit:
    """An emitter writing lines to `stream` (flushed: progress must show while the work runs)."""

    def emit(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return emit
