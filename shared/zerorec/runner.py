"""Serve a functions-framework function with uvicorn in this process: no gunicorn, no fork.

    python -m zerorec.runner --target recall --source functions/recall/main.py --port 8081

functions-framework's CLI serves an ASGI function through gunicorn with one UvicornWorker: the
master imports the function (a serving function loads its model there) and forks the worker. On
Knative a pod is one process and the autoscaler owns concurrency, so the fork buys nothing and
costs three things: the worker's boot (part of every cold start), a second process's memory, and
clients that do not survive a fork (obstore's tokio runtime, our S3 client, hangs forever in a
forked child, so the worker could never reload a model). This runner builds the same Starlette app
with `functions_framework.aio.create_asgi_app` and runs uvicorn on it directly. Flags and
environment variables are the functions-framework CLI's (FUNCTION_TARGET, FUNCTION_SOURCE, HOST,
PORT); LOG_LEVEL sets the log level (default warning).

Every function is served through `zerorec.observability` (GET /metrics, request counts and latency,
W3C traceparent, JSON logs, optional OpenTelemetry spans) and `zerorec.apidocs` (GET /docs, Swagger
UI over the function's /openapi.json): implemented once here, not per function.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def command(target: str, source: str | Path, host: str, port: int) -> list[str]:
    """The argv that serves function `target` of `source` on host:port with this runner."""
    return [sys.executable, "-m", "zerorec.runner", "--target", target, "--source", str(source),
            "--host", host, "--port", str(port)]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, import the function (its cold start), serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m zerorec.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=os.environ.get("FUNCTION_TARGET"), help="function name")
    parser.add_argument("--source", default=os.environ.get("FUNCTION_SOURCE", "main.py"), help="main.py path")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args(argv)
    if not args.target:
        parser.error("--target (or FUNCTION_TARGET) is required")
    if not Path(args.source).is_file():
        parser.error(f"--source {args.source}: no such file")

    from zerorec.observability import cold_start, configure_logging, instrument
    from zerorec.settings import get_settings

    settings = get_settings()
    log_level = os.environ.get("LOG_LEVEL", "warning")
    configure_logging(log_level, settings.log_format, args.target)

    import uvicorn
    from functions_framework.aio import create_asgi_app

    from zerorec.apidocs import with_docs

    app = create_asgi_app(args.target, args.source)  # runs main.py: a serving function loads its model
    served = instrument(with_docs(app, args.target), args.target, settings)
    cold_start(args.target, process_age_s())
    uvicorn.run(
        served,
        host=args.host,
        port=args.port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to the root logger configured above
        access_log=False,  # ZEROREC_ACCESS_LOG: one structured line per request instead
        lifespan="off",  # the app has no lifespan handlers: main.py did the start-up work
    )


_T0 = time.monotonic()  # fallback start time where /proc is not there


def process_age_s() -> float:
    """Seconds since this process started (interpreter start included), from /proc on Linux."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _T0


if __name__ == "__main__":
    main()
