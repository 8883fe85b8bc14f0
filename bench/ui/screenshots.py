"""Screenshots of the Dagster UI after a real run, for docs/UI.md (not a test; needs Debian's `chromium`).

    apt-get install -y chromium
    .venv/bin/python bench/ui/screenshots.py --out docs/screenshots

1. copies the repository to a temp dir (tests/orchestration/project_copy.py: a 20-user ML-100K sample as
   raw data) with a small budget: tiny LLM profile, 2 SASRec epochs, 1 LLM epoch, one window per user;
2. starts `dagster dev` there (tests/orchestration/ui_helpers/dagster_ui.py) and launches `retrain_job`
   (raw data -> splits -> SASRec -> teacher -> students -> evaluation -> promoted_model) over GraphQL;
3. if the promotion gate refuses the student (likely: on 20 users no model beats random ranking 2x),
   captures that check, then relaxes `promotion.min_lift_over_random` to 0 in the copy, commits it, and
   re-runs model_evaluation + promoted_model (DVC skips the unchanged evaluation stage);
4. captures the pages in PAGES with Debian's headless Chromium driven by Playwright (bench/ui/browser.py).
"""

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/orchestration"))
from browser import Browser  # noqa: E402
from project_copy import TEST_PARAMS, copy_project, git  # noqa: E402
from ui_helpers.dagster_ui import DagsterDev, RunFailed  # noqa: E402

from slmrec.config import load_params  # noqa: E402

PARAMS = {
    **TEST_PARAMS,  # 2 SASRec epochs
    "llm": {"profile": "tiny", "teacher_layers": 4, "student_layers": 2, "windows_per_user": 1},  # tiny has 4 layers
    "distill": {"blocks": 2},
    "train_llm": {"epochs": 1},
}
GATE_STEP = "model_evaluation_candidate_vs_baselines"


@dataclass
class Page:
    file: str
    path: str  # in the UI; {location} and {run_id} are filled in
    ready_text: str  # the page has loaded its data once its text contains this
    what: str
    height: int = 1000
    expand_graph: bool = False  # global lineage: hide the side panels, expand every group
    click: str | None = None  # the text of a link/button to click before the capture (e.g. open a table)


PAGES = [
    Page("models_group.png", "/locations/{location}/asset-groups/models", "student_nokd",
         "the models group: each model's last materialization and check status"),
    Page("catalog.png", "/assets", "promoted_model", "the catalog: every asset with its group and status"),
    Page("student_asset.png", "/assets/student", "content_hash", "the distilled student: metadata, checks, lineage",
         height=1500),
    Page("dataset_splits_checks.png", "/assets/dataset_splits?view=checks", "dataset_splits_contract",
         "the blocking contract check on the splits"),
    Page("model_evaluation_gate.png", "/assets/model_evaluation?view=checks", "candidate_vs_baselines",
         "the promotion gate after the re-run (WARN, not blocking), its comparison table open",
         click="[Show Markdown]"),
    Page("promoted_model.png", "/assets/promoted_model", "content_hash", "the promotion record", height=1300),
    Page("run.png", "/runs/{run_id}", "ENGINE_EVENT", "the retrain_job run: steps and their logs"),
    Page("materialize_all_dialog.png", "/asset-groups", "deployment",
         "what 'Materialize all…' on the global graph opens: a backfill over the landing partitions",
         click="Materialize all…"),
    # last: it hides the navigation bar, which the browser then remembers for later pages
    Page("asset_graph.png", "/asset-groups", "deployment", "global asset lineage, every group expanded",
         height=900, expand_graph=True),
]
REFUSED = Page("model_evaluation_gate_refused.png", "/assets/model_evaluation?view=checks", "candidate_vs_baselines",
               "the promotion gate refusing the student (ERROR): the reasons in its description")


def capture(browser: Browser, base_url: str, page: Page, out_dir: Path, **fill: str) -> Path:
    browser.set_height(page.height)
    browser.open(base_url + page.path.format(**fill))
    browser.wait_for(f"document.body.innerText.includes({page.ready_text!r})", timeout_s=90, settle_s=3)
    if page.expand_graph:
        browser.click_text("Hide navigation")
        browser.click_icon("panel_show_right")  # the asset tree beside the graph
        time.sleep(1)
        browser.mouse_click(browser.size[0] - 300, page.height - 150, button="right")  # the graph's background menu
        time.sleep(1)
        browser.click_text("Expand all groups")
        time.sleep(4)  # layout runs in a web worker
    if page.click:
        browser.click_text(page.click, selector="button, a, span, div")
        time.sleep(1.5)
    out = out_dir / page.file
    browser.screenshot(out)
    print(f"{out}: {page.what}", flush=True)
    return out


def relax_gate(root: Path) -> None:
    """promotion.min_lift_over_random: 0 in the copy's params.yaml, committed (so lineage stays clean)."""
    params = root / "params.yaml"
    text = params.read_text()
    current = load_params(params).promotion.min_lift_over_random
    needle = f"min_lift_over_random: {current}"
    if needle not in text:
        raise ValueError(f"{params}: expected the line '{needle}'")
    params.write_text(text.replace(needle, "min_lift_over_random: 0.0"))
    git(root, "commit", "-q", "-am", "screenshots: no lift-over-random requirement on the 20-user sample")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/screenshots")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the copy and DAGSTER_HOME here (default: a new temp dir)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--reuse", action="store_true",
                        help="--workdir already holds a finished run (from an earlier call): only take the screenshots")
    args = parser.parse_args(argv)
    if args.reuse and args.workdir is None:
        parser.error("--reuse needs --workdir")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="slmrec-ui-"))
    root = work / "slmrec" if args.reuse else copy_project(work / "slmrec", PARAMS)
    args.out.mkdir(parents=True, exist_ok=True)
    with DagsterDev(root, work / "dagster_home") as ui, Browser(size=(args.width, 1000)) as browser:
        print(f"dagster dev on {ui.url} (location {ui.location}); DAGSTER_HOME {ui.home}", flush=True)
        ui.query("mutation { setNuxSeen }")  # the "join the community" dialog would cover every page
        if args.reuse:
            run_id = ui.latest_run_id("retrain_job")
        else:
            run_id = run_pipeline(ui, browser, root, args)
        for page in PAGES:
            capture(browser, ui.url, page, args.out, location=ui.location, run_id=run_id)
    return 0


def run_pipeline(ui: DagsterDev, browser: Browser, root: Path, args: argparse.Namespace) -> str:
    """retrain_job end to end (relaxing the gate once if it refuses, see the module doc); its run id."""
    started = time.monotonic()
    run_id = ui.launch_job("retrain_job", tags={"slmrec/trigger": "screenshots"})
    try:
        ui.wait_for_run(run_id, timeout_s=args.run_timeout, poll_s=5.0)
    except RunFailed:
        failed = {s["stepKey"] for s in ui.run_status(run_id)["stepStats"] if s["status"] == "FAILURE"}
        if failed != {GATE_STEP}:
            raise
        print(f"run {run_id}: the promotion gate refused the student", flush=True)
        capture(browser, ui.url, REFUSED, args.out)
        relax_gate(root)
        rerun = ui.launch_assets(["model_evaluation", "promoted_model"], tags={"slmrec/trigger": "screenshots"})
        ui.wait_for_run(rerun, timeout_s=args.run_timeout, poll_s=5.0)
    print(f"pipeline done in {time.monotonic() - started:.0f}s", flush=True)
    return run_id


if __name__ == "__main__":
    sys.exit(main())
