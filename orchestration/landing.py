"""The landing folder: one file per day, named YYYY-MM-DD.<csv|tsv|parquet|jsonl> (optionally a suffix
after the date, e.g. 1998-03-01.part2.csv). The date is the daily partition key (never a comma)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import dagster as dg

from slmrec.config import load_params
from slmrec.stages.data import LANDING_NAME
from slmrec.hashing import sha256_file
from orchestration.pipeline import PROJECT_DIR



def landing_partitions() -> dg.DailyPartitionsDefinition:
    start = load_params(PROJECT_DIR / "params.yaml").data.landing_start
    return dg.DailyPartitionsDefinition(start_date=start)


def landing_files(landing_dir: Path) -> dict[str, list[Path]]:
    """{partition key (date): [files]} for every well-named file; other names are ignored (and logged by the sensor)."""
    by_day: dict[str, list[Path]] = defaultdict(list)
    if landing_dir.is_dir():
        for f in sorted(landing_dir.iterdir()):
            m = LANDING_NAME.match(f.name)
            if f.is_file() and m:
                by_day[m.group(1)].append(f)
    return dict(by_day)


def file_fingerprint(path: Path) -> str:
    return sha256_file(path)[:16]
