"""CLI: `python -m jobs.vector_generation [--source bundle|events] [--model M] [--name vectors]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from zerorec.settings import get_settings
from zerorec.storage import event_bus, object_store

from jobs.vector_generation.job import DEFAULT_NAME, run_vectors


def main(argv: Sequence[str] | None = None) -> int:
    """Build and publish the vectors bundle with the configured stores; print the report."""
    s = get_settings()
    p = argparse.ArgumentParser(description="ZeroRec item vectors -> faiss bundle")
    p.add_argument("--source", choices=["bundle", "events"], default="bundle")
    p.add_argument("--model", default=s.model_name, help="bundle with the ALS factors (source bundle)")
    p.add_argument("--events-prefix", default="exports/events", help="exported Parquet (source events)")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--no-event", action="store_true", help="do not publish model.published")
    a = p.parse_args(argv)
    report = run_vectors(
        object_store(s),
        None if a.no_event else event_bus(s),
        source=a.source,
        model=a.model,
        events_prefix=a.events_prefix,
        name=a.name,
        factors=a.factors,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
