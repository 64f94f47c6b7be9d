"""The dashboard in a real browser: ``twinfer ui`` on a free port, headless Chromium
changes a widget and sees the metric change; every page opens without an exception.
Skips when Chromium or Playwright is missing."""

from __future__ import annotations

import json
import time

import pytest
import ui_browser as ub
from ui_data import RESULTS, sampled_profile_doc

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(bool(ub.missing()), reason=ub.missing() or "ok")]


def test_whatif_tp_change_updates_tpot_in_the_browser(tmp_path):
    with ub.served(tmp_path / "server.log") as url, ub.browser_page() as page:
        page.goto(url)
        page.wait_for_selector('[data-testid="stMetricValue"]')
        ub.wait_idle(page)
        before = ub.metric_text(page, "TPOT")
        assert ub.metric_text(page, "GPUs") == "2"
        tp = page.get_by_label("Tensor parallel (TP)", exact=True)
        tp.fill("1")
        tp.press("Enter")
        deadline = time.monotonic() + 60
        while ub.metric_text(page, "GPUs") != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
        ub.wait_idle(page)
        assert ub.metric_text(page, "GPUs") == "1"
        assert ub.metric_text(page, "TPOT") != before
        assert "tp: 1" in page.get_by_label("Scenario YAML", exact=True).input_value()
        assert not ub.exceptions(page)
        shot = tmp_path / "whatif.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000


def test_every_page_opens_and_search_runs(tmp_path):
    with ub.served(tmp_path / "server.log") as url, ub.browser_page() as page:
        for path, title in (("search", "Layout search"), ("calibration", "Calibration"),
                            ("sim-vs-real", "Sim vs real")):
            page.goto(f"{url}/{path}")
            page.get_by_role("heading", name=title).first.wait_for()
            ub.wait_idle(page)
            assert not ub.exceptions(page), path
            page.screenshot(path=str(tmp_path / f"{path}.png"))
        # uploads: a profile on Calibration, an executor run on Sim vs real
        profile = tmp_path / "mine.json"
        profile.write_text(json.dumps(sampled_profile_doc("uploaded-toy")))
        page.goto(f"{url}/calibration")
        ub.wait_idle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(profile))
        ub.wait_idle(page)
        ub.pick(page, "Profile", "uploaded-toy (uploaded: mine.json)")
        page.get_by_role("tab", name="GEMM").click()
        page.get_by_text("n=14336 k=4096").first.wait_for()
        assert not ub.exceptions(page)
        page.goto(f"{url}/sim-vs-real")
        ub.wait_idle(page)
        runs = page.get_by_role("heading").filter(has_text="run(s)")
        before = int(runs.inner_text().split()[0]) if runs.count() else 0
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(RESULTS))
        page.get_by_role("heading", name=f"{before + 1} run(s)").first.wait_for()
        assert not ub.exceptions(page)
        page.goto(f"{url}/search")
        page.get_by_role("button", name="Run search").click()
        page.wait_for_selector('[data-testid="stDataFrame"]')
        page.get_by_role("button", name="Use this layout").click()
        page.get_by_role("heading", name="What-if").first.wait_for()
        page.wait_for_selector('[data-testid="stCode"]')
        ub.wait_idle(page)
        assert "mpirun" in page.locator('[data-testid="stCode"]').first.inner_text()
        assert not ub.exceptions(page)
