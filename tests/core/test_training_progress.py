"""Progress of a long training (issue 11): a line per stage with elapsed time, Spark stage lines."""

from __future__ import annotations

from dataclasses import dataclass

from zerorec.training.progress import SparkProgress, StageLog


def test_stage_lines_carry_elapsed_time_and_the_previous_stage_duration():
    now = [100.0]
    lines: list[str] = []
    log = StageLog(lines.append, clock=lambda: now[0])
    log("reading")
    now[0] = 102.5
    log("fit als")
    now[0] = 110.0
    log("fit als")  # a stage run twice (validation cut, then all data) adds up
    now[0] = 111.0
    assert "+    0.0s  reading" in lines[0]
    assert "+    2.5s  fit als  (previous stage 2.5s)" in lines[1]
    assert "(previous stage 7.5s)" in lines[2]
    assert log.summary() == {"reading": 2.5, "fit als": 8.5}


@dataclass
class _Stage:
    name: str
    numTasks: int
    numActiveTasks: int
    numCompletedTasks: int


class _Tracker:
    def __init__(self) -> None:
        self.active: list[int] = []

    def getActiveStageIds(self) -> list[int]:
        return self.active

    def getStageInfo(self, stage_id: int) -> _Stage | None:
        return _Stage("collect at Foo.scala:12", 8, 2, 5) if stage_id == 7 else None


class _Context:
    def __init__(self) -> None:
        self.tracker = _Tracker()

    def statusTracker(self) -> _Tracker:
        return self.tracker


def test_spark_progress_prints_active_stages_only_while_spark_works():
    ctx = _Context()
    lines: list[str] = []
    with SparkProgress(ctx, lines.append, period_s=0.01) as progress:
        assert progress.snapshot() == []
        ctx.tracker.active = [7, 9]  # 9: finished between the two calls, no info
        assert progress.snapshot() == ["stage 7 (collect) tasks 5/8, 2 running"]
        for _ in range(200):
            if lines:
                break
            import time

            time.sleep(0.01)
    assert lines and "spark: stage 7 (collect) tasks 5/8, 2 running" in lines[0]
