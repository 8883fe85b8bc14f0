"""Screenshots of monitoring in the Dagster UI and of the Evidently report, for docs/UI.md (not a test).

    make chromium
    .venv/bin/python bench/ui/monitoring_screenshots.py --out docs/screenshots

1. trains the tiny experiment of tests/serve/serve_helpers.py (40 users on a ring of 30 items, January 1998)
   and promotes its student (models/promoted.json) in a copy of the repository (project_copy.py);
2. plants a shift on 1998-01-20 (10 known users come back, 10 new users bring only new items), ingests it,
   and writes the batch recommendations of 1998-01-06 (quiet) and 1998-01-20 (shifted);
3. starts `dagster dev` there, materializes `recommendation_monitoring` for both partitions over GraphQL
   (what the UI's Materialize sends), waits for `retrain_on_drift` to request `retrain_job`;
4. captures the Dagster pages with Debian's chromium driven by Playwright (bench/ui/browser.py). The Evidently
   pages are bench/ui/report_screenshot.py's, from a real ML-100K replay day.
The tiny data gives every user the same history length, so the normed-Wasserstein rules are loosened here
(see tests/monitor/test_monitor_dagster.py); the numbers in these pictures are noise from 40 users.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/orchestration"))
sys.path.insert(0, str(REPO / "tests/serve"))
from browser import Browser  # noqa: E402
from project_copy import TEST_PARAMS, copy_project  # noqa: E402
from serve_helpers import PARAMS as SERVE_PARAMS  # noqa: E402
from serve_helpers import write_events  # noqa: E402
from ui_helpers.dagster_ui import DagsterDev  # noqa: E402

from slmrec.data.ingest import ingest  # noqa: E402
from slmrec.serve.batch import run_batch  # noqa: E402
from slmrec.serve.recommender import Recommender  # noqa: E402
from slmrec.stages.experiment import run_experiment  # noqa: E402

K = 5
QUIET, SHIFT = "1998-01-06", "1998-01-20"
MONITORING = dict(k=K, min_users=5, window_days=1, truth_days=3, retrain_cooldown_hours=24.0,
                  score_drift_threshold=1e9, input_drift_threshold=1e9, max_popularity_change=1e9, max_ndcg_drop=1.0)


def build(work: Path) -> Path:
    exp = work / "experiment"
    exp.mkdir(parents=True)
    write_events(exp / "events.csv")
    (exp / "params.yaml").write_text(SERVE_PARAMS)
    run_experiment(argparse.Namespace(profile="tiny", format="events", path=str(exp / "events.csv"), items=None,
                                       column_map=None, hf_path=None, out=str(exp / "out"), max_users=None,
                                       params=str(exp / "params.yaml")), log=lambda m: None)
    out = exp / "out"
    params = {**TEST_PARAMS, "llm": {"profile": "tiny", "teacher_layers": 4, "student_layers": 2},
              "distill": {"blocks": 2}, "sequences": {"out_dir": str(out / "splits")}, "monitoring": MONITORING}
    root = copy_project(work / "slmrec", params)
    (root / "data").mkdir(exist_ok=True)
    db = root / "data/warehouse.duckdb"
    shutil.copy2(out / "warehouse.duckdb", db)
    rows = ["user_id,item_id,ts"] + [f"u{u},m1,{885_254_400 + 3600 + u}" for u in range(10)]
    rows += [f"n{u},new-{u % 5},{885_254_400 + 7200 + u}" for u in range(10)]
    (work / f"{SHIFT}.csv").write_text("\n".join(rows) + "\n")
    ingest("events", str(work / f"{SHIFT}.csv"), str(db))
    (root / "models").mkdir(exist_ok=True)
    (root / "models/promoted.json").write_text(json.dumps({"model": "student", "path": str(out / "models/student")}))
    rec = Recommender.load(out / "models/student", out / "splits", db)
    for day in (QUIET, SHIFT):
        run_batch(rec, K, root / f"results/recommendations/{day}.parquet", day, day=day)
    return root


PAGES = [  # (file, path, ready text, height, click)
    ("deployment_group.png", "/locations/{location}/asset-groups/deployment", "Latest event", 900, None),
    ("recommendation_monitoring_asset.png", "/assets/recommendation_monitoring?partition=" + SHIFT, "report_html",
     1500, None),
    ("recommendation_drift_check.png", "/assets/recommendation_monitoring?view=checks", "recommendation_drift",
     1000, None),
    ("retrain_on_drift_sensor.png", "/locations/{location}/sensors/retrain_on_drift", "retrain_on_drift", 1000, None),
    ("retrain_on_drift_run.png", "/runs/{run_id}", "retrain_job", 1000, "View tags and config"),
]


def capture_page(browser: Browser, ui: DagsterDev, out: Path, page: tuple, run_id: str = "") -> None:
    file, path, ready, height, click = page
    browser.set_height(height)
    browser.open(ui.url + path.format(location=ui.location, run_id=run_id))
    browser.wait_for(f"document.body.innerText.includes({ready!r}) && "
                     "!document.body.innerText.includes('Loading...')", timeout_s=120, settle_s=3)
    if click:
        browser.click_text(click)
        time.sleep(1.5)
    browser.screenshot(out / file)
    print(out / file, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/screenshots")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1600)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slmrec-monitoring-ui-"))
    root = build(work)
    args.out.mkdir(parents=True, exist_ok=True)
    with DagsterDev(root, work / "dagster_home") as ui, Browser(size=(args.width, 1000)) as browser:
        print(f"dagster dev on {ui.url}; DAGSTER_HOME {ui.home}", flush=True)
        ui.query("mutation { setNuxSeen }")
        for day in (QUIET, SHIFT):
            run_id = ui.launch_assets(["recommendation_monitoring"], tags={"dagster/partition": day})
            print(f"{day}: {ui.wait_for_run(run_id, timeout_s=600, poll_s=3)}", flush=True)
        # the Evidently pages themselves: bench/ui/report_screenshot.py, on a real replay day (docs/UI.md)
        for page in PAGES[:3]:
            capture_page(browser, ui, args.out, page)
        deadline = time.monotonic() + 300
        while True:  # the sensor ticks every 60 s
            try:
                retrain = ui.latest_run_id("retrain_job")
                break
            except LookupError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(5)
        print(f"retrain_on_drift requested run {retrain}", flush=True)
        for page in PAGES[3:]:
            capture_page(browser, ui, args.out, page, retrain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
