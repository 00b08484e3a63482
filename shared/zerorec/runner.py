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
PORT); LOG_LEVEL sets uvicorn's (default warning).
"""

from __future__ import annotations

import argparse
import os
import sys
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

    import uvicorn
    from functions_framework.aio import create_asgi_app

    app = create_asgi_app(args.target, args.source)  # runs main.py: a serving function loads its model
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=os.environ.get("LOG_LEVEL", "warning"),
        access_log=False,
        lifespan="off",  # the app has no lifespan handlers: main.py did the start-up work
    )


if __name__ == "__main__":
    main()
