"""Alerts: one JSON line per alert in automation.alerts_file (and the Dagster log), for every sensor."""

import datetime as dt
import json
from pathlib import Path


def append_alert(path: Path, alert: dict) -> dict:
    """Append `alert` (plus its time) as one line; a single write of one line, so appends never interleave."""
    alert = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **alert}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(alert, sort_keys=True) + "\n")
    return alert
