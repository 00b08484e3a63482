"""Readiness probes for the local servers, used by local/infra.sh.

A server counts as ready only when a real client request succeeds (an open port is not enough:
Kafka accepts connections before its metadata is served). Exit codes: 0 ready, 1 timed out,
2 the server process exited while we waited.

    python local/ready.py kafka|redis|s3 --timeout 60 [--pid 1234]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that has exited but not been reaped still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def probe_kafka(address: str, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": address, "socket.timeout.ms": 2000, "log_level": 0})
    md = admin.list_topics(timeout=timeout)
    if not md.brokers:
        raise RuntimeError("metadata has no brokers yet")


def probe_redis(address: str, timeout: float) -> None:
    import redis

    r = redis.Redis.from_url(address, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        if not r.ping():
            raise RuntimeError("PING failed")
    finally:
        r.close()


def probe_s3(address: str, timeout: float) -> None:
    """A signed LIST of the bucket (local/infra.sh creates it) must answer: server up, keys right."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        os.environ.get("ZEROREC_S3_BUCKET", "zerorec"),
        endpoint=address,
        access_key_id=os.environ.get("ZEROREC_S3_ACCESS_KEY", "zerorec"),
        secret_access_key=os.environ.get("ZEROREC_S3_SECRET_KEY", "zerorec-secret"),
        region=os.environ.get("ZEROREC_S3_REGION", "us-east-1"),
        virtual_hosted_style_request=False,
        client_options={
            "allow_http": True,
            "timeout": f"{timeout:.1f}s",
            "connect_timeout": f"{timeout:.1f}s",
        },
        retry_config={"max_retries": 0},
    )
    next(iter(obstore.list(store, chunk_size=1)), None)


PROBES = {"kafka": probe_kafka, "redis": probe_redis, "s3": probe_s3}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("server", choices=sorted(PROBES))
    ap.add_argument("address", help="bootstrap host:port, redis:// URL or http:// endpoint")
    ap.add_argument("--timeout", type=float, default=60.0, help="overall bound in seconds")
    ap.add_argument("--pid", type=int, help="give up at once if this process exits")
    args = ap.parse_args()

    deadline = time.monotonic() + args.timeout
    last: Exception | None = None
    while True:
        if not _alive(args.pid):
            print(f"{args.server}: process {args.pid} exited", file=sys.stderr)
            return 2
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"{args.server}: not ready after {args.timeout:.0f}s: {last}", file=sys.stderr)
            return 1
        try:
            PROBES[args.server](args.address, max(0.5, min(3.0, left)))
            return 0
        except Exception as e:  # any failure means "not yet": keep the last one for the message
            last = e
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
