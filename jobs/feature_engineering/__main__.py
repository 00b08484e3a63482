"""CLI: `python -m jobs.feature_engineering [--events PATH | --prefix P] [--as-of TS] [--master M]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from zerorec.event_schemas import parse_timestamp
from zerorec.settings import get_settings
from zerorec.storage import kv_store, object_store

from jobs.feature_engineering.job import FeatureJobConfig, run_features


def main(argv: Sequence[str] | None = None) -> int:
    """Run the feature job once with the configured stores; print the report."""
    p = argparse.ArgumentParser(description="ZeroRec offline features (PySpark)")
    p.add_argument("--events", type=Path, help="local Parquet file/folder (default: the object store)")
    p.add_argument("--prefix", default="exports/events", help="object-store prefix of the export")
    p.add_argument("--catalogue", type=Path, help="local catalogue CSV/Parquet with categories")
    p.add_argument("--catalogue-key", help="object key of a catalogue CSV/Parquet")
    p.add_argument("--as-of", help="RFC 3339 end of the windows (default: now)")
    p.add_argument("--output-prefix", default="features")
    p.add_argument("--no-kv", action="store_true", help="write Parquet only")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="512m")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="Spark setting")
    a = p.parse_args(argv)
    settings = get_settings()
    config = FeatureJobConfig(
        events_prefix=a.prefix,
        events_path=a.events,
        catalogue_key=a.catalogue_key,
        catalogue_path=a.catalogue,
        as_of=parse_timestamp(a.as_of) if a.as_of else None,
        output_prefix=a.output_prefix,
        write_kv=not a.no_kv,
        master=a.master,
        driver_memory=a.driver_memory,
        spark_conf=dict(c.split("=", 1) for c in a.conf),
    )
    report = run_features(config, object_store(settings), None if a.no_kv else kv_store(settings))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
