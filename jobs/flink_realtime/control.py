"""Start, stop and watch the PyFlink job as a local process (the flink-realtime function's logic).

The job runs in its own interpreter (`ZEROREC_FLINK_PYTHON`, default .local-infra/flink-venv/bin/python,
see requirements.txt) in its own process group, so stop reaches the Flink JVM and its Python workers.
The connector jar is `ZEROREC_FLINK_KAFKA_JAR`, else the cached `local/infra.sh jars flink-kafka`.
Kafka, topic and Redis come from Settings; the KV key templates from zerorec.realtime (the layout's owner).
Checkpoints go to `<run_dir>/checkpoints` and are retained; a start resumes from the newest one
(window state and Kafka offsets), so a crash or a stop loses nothing and counts nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.realtime import RT_RETENTION_S, RT_TTL_S, rt_item_counts_key, rt_user_key
from zerorec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
JOB_MODULE = "jobs.flink_realtime.job"


def flink_python() -> Path:
    """The interpreter with apache-flink installed."""
    return Path(
        os.environ.get("ZEROREC_FLINK_PYTHON", ROOT / ".local-infra" / "flink-venv" / "bin" / "python")
    )


def connector_jar() -> Path:
    """The flink-sql-connector-kafka jar (fetched once from Maven Central by local/infra.sh)."""
    given = os.environ.get("ZEROREC_FLINK_KAFKA_JAR")
    if given:
        return Path(given)
    try:
        out = subprocess.run(
            [str(ROOT / "local" / "infra.sh"), "jars", "flink-kafka"],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise NotFoundError(f"no Kafka connector jar: set ZEROREC_FLINK_KAFKA_JAR ({exc})") from None
    jars = sorted(Path(out).glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise NotFoundError(f"no flink-sql-connector-kafka jar in {out}")
    return jars[0]


@dataclass(frozen=True)
class JobOptions:
    """What the control function may set per start."""

    window_s: int = 60
    startup: str = "recent"  # without a checkpoint: the last RT_RETENTION_S of the log
    group: str = "zerorec-flink-realtime"
    topic: str | None = None  # default settings.topic_behavior
    key_prefix: str = ""  # prepended to the KV keys (tests, side-by-side runs)
    checkpoint_s: int = 10
    resume: bool = True  # start from the newest retained checkpoint when there is one

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobOptions:
        """Validated options from a request body."""
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise InvalidInputError(f"unknown options {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(**raw)
        if not (isinstance(opts.window_s, int) and 1 <= opts.window_s <= 3600):
            raise InvalidInputError("window_s must be an integer in 1..3600")
        if opts.startup not in ("recent", "group-offsets", "earliest", "latest"):
            raise InvalidInputError("startup must be recent, group-offsets, earliest or latest")
        if not (isinstance(opts.checkpoint_s, int) and 1 <= opts.checkpoint_s <= 600):
            raise InvalidInputError("checkpoint_s must be an integer in 1..600")
        if not isinstance(opts.resume, bool):
            raise InvalidInputError("resume must be true or false")
        for name in ("group", "topic", "key_prefix"):
            value = getattr(opts, name)
            if value is not None and (
                not isinstance(value, str) or "'" in value or "%" in value or len(value) > 200
            ):
                raise InvalidInputError(
                    f"{name} must be a string without quotes or %, at most 200 characters"
                )
        return opts


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (a `chk-N` folder with its `_metadata`) under
    `checkpoint_dir/<job id>/`, or None."""
    found = [
        (int(chk.name.removeprefix("chk-")), chk.stat().st_mtime, chk)
        for chk in checkpoint_dir.glob("*/chk-*")
        if chk.name.removeprefix("chk-").isdigit() and (chk / "_metadata").is_file()
    ]
    if not found:
        return None
    return max(found, key=lambda f: (f[1], f[0]))[2]


def job_argv(
    settings: Settings,
    opts: JobOptions,
    jar: Path,
    python: Path,
    checkpoint_dir: Path | None = None,
    restore: Path | None = None,
) -> list[str]:
    """The command line of the job process."""
    extra = ["--checkpoint-dir", str(checkpoint_dir)] if checkpoint_dir else []
    if restore is not None:
        extra += ["--restore", str(restore)]
    return [
        str(python),
        "-m",
        JOB_MODULE,
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic",
        opts.topic or settings.topic_behavior,
        "--group",
        opts.group,
        "--startup",
        opts.startup,
        "--redis-url",
        settings.redis_url,
        "--jar",
        str(jar),
        "--window-s",
        str(opts.window_s),
        "--checkpoint-s",
        str(opts.checkpoint_s),
        "--item-key",
        opts.key_prefix + rt_item_counts_key("%s"),
        "--user-key",
        opts.key_prefix + rt_user_key("%s"),
        "--ttl-s",
        str(RT_TTL_S),
        "--max-age-s",
        str(RT_RETENTION_S),
        *extra,
    ]


class FlinkJobController:
    """One job process at a time; its pid and log live under `run_dir`."""

    def __init__(self, settings: Settings, run_dir: Path | None = None) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir or settings.data_dir / "flink-realtime")
        self.pid_file = self.run_dir / "job.pid"
        self.log_file = self.run_dir / "job.log"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at: float | None = None
        self._options: JobOptions | None = None
        self._restored: Path | None = None

    def _pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, opts: JobOptions) -> dict[str, Any]:
        """Start the job unless one runs; its status."""
        if self._pid() is not None:
            return {**self.status(), "started": False}
        python = flink_python()
        if not python.exists():
            raise NotFoundError(f"no Flink interpreter at {python}: run local/bootstrap.sh")
        restore = latest_checkpoint(self.checkpoint_dir) if opts.resume else None
        argv = job_argv(self.settings, opts, connector_jar(), python, self.checkpoint_dir, restore)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)  # the job imports jobs.flink_realtime only, never zerorec
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid_file.write_text(str(self._proc.pid))
        self._started_at, self._options, self._restored = time.time(), opts, restore
        return {**self.status(), "started": True}

    def stop(self, grace_s: float = 15.0) -> dict[str, Any]:
        """SIGTERM the job's process group, SIGKILL after `grace_s`; its status."""
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self._alive_group(pid):
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return {**self.status(), "stopped": pid is not None}

    @staticmethod
    def _alive_group(pid: int) -> bool:
        try:
            os.killpg(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def status(self, tail_lines: int = 5) -> dict[str, Any]:
        """running, pid, uptime, options, exit code of a job that ended, the log's last lines."""
        pid = self._pid()
        tail: list[str] = []
        if self.log_file.exists():
            tail = self.log_file.read_text(errors="replace").splitlines()[-tail_lines:]
        exit_code = self._proc.poll() if self._proc is not None else None
        return {
            "running": pid is not None,
            "pid": pid,
            "uptime_s": round(time.time() - self._started_at, 1) if pid and self._started_at else None,
            "options": self._options.__dict__ if self._options else None,
            "restored_from": str(self._restored) if self._restored else None,
            "latest_checkpoint": str(latest_checkpoint(self.checkpoint_dir) or "") or None,
            "exit_code": exit_code,
            "log": str(self.log_file),
            "log_tail": tail,
        }
