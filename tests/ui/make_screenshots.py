"""Regenerate the dashboard screenshots of docs/ui/ (not a test).

    python tests/ui/make_screenshots.py [OUT_DIR]    # default: docs/ui

Serves ``twinfer ui`` on a free port and drives each page in headless Chromium
(``ui_browser``): What-if on the FA Pool paper's scenario (TPOT/TPS against
sequence length, FA Pool against its static baseline; with its links given in the
YAML if the shipped profiles lack one) and on the two-stage PP
scenario's timeline; Search on the 70B TP8 x PP2 scenario; Calibration on the
shipped h200-sxm profile; Sim vs real on the shipped validation results.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import ui_browser as ub
from ui_data import fa_pool_paper_doc

from twinfer.ui.editor import dump

ROOT = Path(__file__).resolve().parents[2]


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    ub.wait_idle(page, settle_s=1.5)


def shoot(page, out: Path, name: str) -> None:
    assert not ub.exceptions(page), name
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    print(path)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ub.served(Path(tmp) / "server.log") as url:
        with ub.browser_page(1440, 1180) as page:
            page.goto(url)
            ub.wait_idle(page)
            ub.pick(page, "Shipped scenario", "fa_pool_paper")
            if page.locator('[data-testid="stAlertContentError"]').count():
                # the shipped profiles lack a link it needs: give the links in the YAML
                page.get_by_text("Scenario YAML").first.click()  # unfold the editor
                editor = page.get_by_label("Scenario YAML", exact=True)
                editor.fill(dump(fa_pool_paper_doc()))
                editor.press("Control+Enter")
                ub.wait_idle(page, settle_s=2.0)
                page.get_by_text("Scenario YAML").first.click()  # fold the editor again
                ub.wait_idle(page, settle_s=1.0)
            shoot(page, out, "whatif")
            ub.pick(page, "Shipped scenario", "llama3_8b_h200_pp2")
            tab(page, "Timeline")
            shoot(page, out, "whatif_timeline")
        with ub.browser_page(1440, 1500) as page:
            page.goto(f"{url}/search")
            ub.wait_idle(page)
            ub.pick(page, "Scenario", "llama3_70b_h100_tp8_pp2")
            page.get_by_role("button", name="Run search").click()
            page.wait_for_selector('[data-testid="stDataFrame"]')
            ub.wait_idle(page, settle_s=2.0)
            shoot(page, out, "search")
        with ub.browser_page(1440, 1000) as page:
            page.goto(f"{url}/calibration")
            ub.wait_idle(page)
            ub.pick(page, "Profile", "h200-sxm (shipped)")
            tab(page, "Decode attention")
            shoot(page, out, "calibration")
            page.goto(f"{url}/sim-vs-real")
            ub.wait_idle(page, settle_s=2.0)
            shoot(page, out, "sim_vs_real")


if __name__ == "__main__":
    reason = ub.missing()
    if reason:
        sys.exit(reason)
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "ui")
