"""Local PingSource: fire each PingSource's cron schedule as a CloudEvent to its sink.

The event is the one the real PingSource sends: type `dev.knative.sources.ping`, source
`/apis/v1/namespaces/<ns>/pingsources/<name>`, id a uuid, time the scheduled tick, data the manifest's
`data` (or decoded `dataBase64`) with `contentType`, plus the ceOverrides extensions (ZeroRec sets
`zerorectype` there). Binary HTTP mode. Like PingSource (no `delivery` field) there is no retry.

Run: `python -m local.eventing.ping_source` (loop), `--once NAME` (fire now, exit 0 on a 2xx),
`--list` (show the next tick of each). SIGTERM/SIGINT stop the loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
from croniter import croniter
from zerorec.cloudevents_io import PING_EVENT_TYPE, CloudEvent, to_http_binary
from zerorec.errors import InvalidInputError

from local.eventing.manifests import (
    DEFAULT_MANIFESTS,
    PingSourceSpec,
    SinkResolver,
    load_documents,
    ping_sources,
)

log = logging.getLogger("zerorec.eventing.ping_source")
MAX_SLEEP_S = 60.0


def ping_event(spec: PingSourceSpec, when: datetime) -> CloudEvent:
    """The CloudEvent PingSource `spec` sends for the tick at `when`."""
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/apis/v1/namespaces/{spec.namespace}/pingsources/{spec.name}",
        "type": PING_EVENT_TYPE,
        "time": when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if spec.content_type:
        attributes["datacontenttype"] = spec.content_type
    attributes.update(spec.ce_overrides)
    return CloudEvent(attributes, spec.data or None)


def next_tick(spec: PingSourceSpec, after: datetime) -> datetime:
    """The first tick of `spec.schedule` (in `spec.timezone`) strictly after `after`."""
    if not croniter.is_valid(spec.schedule):
        raise InvalidInputError(f"PingSource {spec.name}: bad cron schedule {spec.schedule!r}")
    local = after.astimezone(ZoneInfo(spec.timezone))
    return croniter(spec.schedule, local).get_next(datetime).astimezone(UTC)


class PingDispatcher:
    """Fires the schedules of several PingSources; `run()` loops until `stop()`."""

    def __init__(
        self, specs: Sequence[PingSourceSpec], *, client: httpx.Client | None = None, timeout_s: float = 30.0
    ):
        for spec in specs:
            if spec.sink.url is None:
                raise InvalidInputError(f"PingSource {spec.name}: sink must be an HTTP destination")
            next_tick(spec, datetime.now(UTC))  # validates schedule and timezone now
        self.specs = {spec.name: spec for spec in specs}
        self.timeout_s = timeout_s
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self.fired = 0
        self.failed = 0

    def stop(self) -> None:
        """End `run()` at once (a request in flight finishes first)."""
        self._stop.set()

    def fire(self, name: str, when: datetime | None = None) -> int:
        """Send PingSource `name`'s event now; return the HTTP status (0: no answer)."""
        spec = self.specs.get(name)
        if spec is None:
            raise InvalidInputError(f"no PingSource named {name!r} (have: {', '.join(sorted(self.specs))})")
        headers, body = to_http_binary(ping_event(spec, when or datetime.now(UTC)))
        try:
            response = self.client.post(
                str(spec.sink.url), headers=headers, content=body, timeout=self.timeout_s
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            log.error("[ping-source %s] %s: %r", name, spec.sink, exc)
            code = 0
        if 200 <= code < 300:
            self.fired += 1
        else:
            self.failed += 1
            log.warning("[ping-source %s] %s answered %s", name, spec.sink, code or "nothing")
        return code

    def run(self) -> None:
        """Fire every schedule at its ticks until `stop()`."""
        now = datetime.now(UTC)
        due = {name: next_tick(spec, now) for name, spec in self.specs.items()}
        try:
            while not self._stop.is_set() and due:
                name = min(due, key=lambda n: due[n])
                wait = (due[name] - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    self._stop.wait(min(wait, MAX_SLEEP_S))
                    continue
                code = self.fire(name, due[name])
                log.info(
                    "[ping-source %s] fired (HTTP %s); fired=%d failed=%d",
                    name,
                    code,
                    self.fired,
                    self.failed,
                )
                due[name] = next_tick(self.specs[name], max(due[name], datetime.now(UTC)))
        finally:
            if self._own_client:
                self.client.close()


def load(
    manifests: Sequence[str] = (str(DEFAULT_MANIFESTS),), sink_overrides: dict[str, str] | None = None
) -> list[PingSourceSpec]:
    """The PingSources of `manifests`, sinks resolved to local URLs."""
    docs = load_documents(manifests)
    return ping_sources(docs, SinkResolver(docs, overrides=sink_overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", action="append", help="file or folder (default: knative/)")
    parser.add_argument("--once", metavar="NAME", help="fire PingSource NAME now and exit")
    parser.add_argument("--list", action="store_true", help="print each PingSource's next tick and exit")
    parser.add_argument("--sink", action="append", default=[], help="NAME=URL: where Service NAME listens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    overrides = {}
    for value in args.sink:
        name, sep, url = value.partition("=")
        if not sep or not url:
            parser.error(f"--sink wants NAME=URL, got {value!r}")
        overrides[name] = url
    try:
        specs = load(args.manifests or [str(DEFAULT_MANIFESTS)], overrides)
        dispatcher = PingDispatcher(specs)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        now = datetime.now(UTC)
        for spec in specs:
            print(f"{spec.name}\t{spec.schedule}\t{next_tick(spec, now).isoformat()}\t{spec.sink}")
        return 0
    if args.once:
        try:
            code = dispatcher.fire(args.once)
        except InvalidInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.once}: HTTP {code or 'no answer'}")
        return 0 if 200 <= code < 300 else 1
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    signal.signal(signal.SIGINT, lambda *_: dispatcher.stop())
    dispatcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
