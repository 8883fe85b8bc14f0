"""The Evidently HTML report opened in a real browser (Debian's chromium, driven by Playwright): the metrics
are rendered by the report's JavaScript, with the hand-computed values of test_monitor_report.py.

Needs /usr/bin/chromium: `make test` installs it (`make chromium`: apt-get install -y chromium). Without it
this test fails and says so; it is never skipped silently.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench/ui"))
from browser import Browser, chromium_path  # noqa: E402
from test_monitor_report import CFG, CURRENT, PROBE, REFERENCE, TRAIN  # noqa: E402

from slmrec.monitor.report import monitor, save_report  # noqa: E402
from slmrec.monitor.verdict import judge  # noqa: E402


def section(text: str, title: str, length: int = 120) -> str:
    start = text.index(title)
    return " ".join(text[start:start + length].split())


@pytest.mark.timeout(300)
def test_evidently_report_renders_its_metrics_in_chromium(tmp_path):
    chromium_path()  # a clear FileNotFoundError naming the fix when chromium is missing
    report = monitor(REFERENCE, CURRENT, TRAIN, CFG, probe=PROBE)
    html = save_report(report, tmp_path / "report", {"verdict": judge(report, CFG).to_dict()})["html"]
    with Browser(size=(1400, 1000)) as browser:
        browser.open(html.resolve().as_uri())
        browser.wait_for("document.body.innerText.includes('Novelty (top-3)')", timeout_s=120, settle_s=1)
        text = browser.text()
        # counters as the widgets render them: current first, then reference (hand-computed values)
        assert section(text, "NDCG (top-3)").startswith("NDCG (top-3). No feedback users excluded. 0.315 current 0.75 reference")
        assert section(text, "Hit Rate (top-3)").startswith("Hit Rate (top-3). No feedback users excluded. 0.5 current 1.0 reference")
        assert section(text, "Personalization (top-3)").startswith("Personalization (top-3) 0.6667 current 0.0 reference")
        assert section(text, "Novelty (top-3)").startswith("Novelty (top-3) 0.5 current 1.0 reference")
        assert "Drift score" not in text  # the score drift is the probe's page
        # the charts are drawn too (plotly SVG), not only the text
        assert browser.evaluate("document.querySelectorAll('svg.main-svg').length") >= 5
        browser.screenshot(tmp_path / "report.png", full_page=True)
        browser.open(html.with_name("probe.html").resolve().as_uri())  # the reference users re-scored now
        browser.wait_for("document.body.innerText.includes('Drift score')", timeout_s=120, settle_s=1)
        text = browser.text()
        assert "Drift score: 0.878" in text  # ValueDrift on score (normed Wasserstein, see test_monitor_report)
        assert "drift detected" in text.lower() and "not detected" not in text  # 0.878 > CFG's 0.5: the rule fails
        browser.open(html.with_name("inputs.html").resolve().as_uri())  # the inputs' report, its own dataset
        browser.wait_for("document.body.innerText.includes('cold_start')", timeout_s=120, settle_s=1)
        assert "Mean value of 'cold_start': current: 0.500, reference: 0.000" in browser.text()
    assert (tmp_path / "report.png").stat().st_size > 50_000
