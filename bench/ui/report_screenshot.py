"""Screenshots of one monitored day's Evidently reports opened in a real browser (chromium via Playwright),
checked against the verdict before they are written (not a test; docs/screenshots).

    .venv/bin/python bench/ui/report_screenshot.py results/replay/honest/1998-02-01/project/results/monitoring/1998-02-15

Reads the day's summary.json (our verdict) and fails unless every drift sentence Evidently renders agrees
with it: "drift not detected" for each passing drift rule, "drift detected" for each failing one. Then writes
<out>/monitoring_report.png (report.html: quality curves, lists; no drift metric),
<out>/monitoring_inputs.png (inputs.html: input means and drifts) and <out>/monitoring_probe.png (probe.html:
the score drift of the model's reference users re-scored on that day).
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import Browser  # noqa: E402



def rendered_drifts(text: str) -> list[bool]:
    """Evidently's drift sentences in page order: True = 'drift detected'."""
    return [not m.group(1) for m in re.finditer(r"drift (not )?detected\. Drift detection method", text)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("day_dir", type=Path, help="a monitoring.out_dir/<day> folder")
    p.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = p.parse_args(argv)
    summary = json.loads((args.day_dir / "summary.json").read_text())
    rules = {r["name"]: r["status"] for r in summary["verdict"]["rules"]}
    args.out.mkdir(parents=True, exist_ok=True)
    with Browser(size=(1400, 1000)) as browser:
        for page, name, drifts, shown in (
                ("report.html", "monitoring_report.png", [], "Novelty"),
                ("inputs.html", "monitoring_inputs.png", ["history_len_drift", "recent_popularity_drift"],
                 "Drift detection method"),
                ("probe.html", "monitoring_probe.png", ["score_drift"], "Drift detection method")):
            browser.open((args.day_dir / page).resolve().as_uri())
            browser.wait_for(f"document.body.innerText.includes('{shown}')", timeout_s=120, settle_s=2)
            said = rendered_drifts(browser.text())
            expected = [rules[d] == "fail" for d in drifts if d in summary["values"]]
            if said != expected:
                raise SystemExit(f"{page}: Evidently says drift={said}, the verdict's rules {drifts} say {expected}")
            browser.screenshot(args.out / name, full_page=True)
            print(f"{args.out / name}: Evidently drift sentences {said} agree with the verdict "
                  f"({summary['verdict']['status']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
