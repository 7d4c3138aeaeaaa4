"""report.html and eval.html of a real tiny run, opened in headless Chromium at 1280 and 800 px.

Checks what a reader meets: a non-blank page, every section heading, every image decoded, no console errors, no
request leaving the file (the pages are self-contained), nothing wider than the window. Screenshots go to a session
folder, and also to $CXR_REPORT_SHOTS when set (e.g. /tmp/report_shots) to be looked at.
"""

from __future__ import annotations

import io
import os
import shutil
from base64 import b64encode
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import Browser, Rendered, open_browser

# The <h2> headings each page must show, in this order (results first, the configuration last), and the <h3>s
# inside them; the report engineer updates these when the pages change.
REPORT_SECTIONS = ("Summary", "Data", "Cross-validation folds", "Training curves", "Throughput",
                   "Out-of-fold evaluation", "Operating thresholds", "Label couplings", "Test-set evaluation",
                   "Refiner / ablation comparison", "Configuration")
REPORT_SUBSECTIONS = ("Per-label out-of-fold AUC with 95% bootstrap CIs", "ROC curves (out-of-fold)",
                      "Calibration (out-of-fold)")
REPORT_TEST_SUBSECTIONS = (*REPORT_SUBSECTIONS, "Test-set metrics", "ROC curves (test set)", "Calibration (test set)")
EVAL_SECTIONS = ("Metrics with 95% bootstrap CIs", "ROC curves", "Precision-recall curves", "Calibration")
WIDTHS = (1280, 800)
# A figure drawn at 100 dpi with 8-9 pt labels (~11-12 px) shown at under 0.75 of its size has text under ~8 px.
MIN_IMAGE_SCALE = 0.75


@pytest.fixture(scope="session")
def browser() -> Browser:
    b = open_browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def pages(pil_run, tmp_path_factory) -> dict[str, tuple[Path, tuple[str, ...], tuple[str, ...]]]:
    """report.html as cxr-train wrote it, the same run's report rebuilt by cxr-report with the test set, and
    cxr-eval's eval.html: {name: (page, expected <h2>s in order, expected <h3>s)}."""
    from cxr_fast.cli import eval as eval_cli
    from cxr_fast.cli import report as report_cli

    data, run = pil_run
    tmp = tmp_path_factory.mktemp("render")
    sub, truth = run / "submission.csv", data / "test_labels.csv"
    assert (run / "report.html").is_file(), "cxr-train wrote no report.html"
    run_copy = Path(shutil.copytree(run, tmp / "run"))
    assert report_cli.main([str(run_copy), "--pred", str(sub), "--truth", str(truth), "--bootstrap", "50"]) == 0
    thr = ["--thresholds", str(run / "thresholds.json")] if (run / "thresholds.json").is_file() else []
    assert eval_cli.main(["--pred", str(sub), "--truth", str(truth), "--bootstrap", "50", *thr,
                          "--out", str(tmp / "eval.json"), "--report", str(tmp / "eval.html")]) == 0
    return {"report": (run / "report.html", REPORT_SECTIONS, REPORT_SUBSECTIONS),
            "report_test": (run_copy / "report.html", REPORT_SECTIONS, REPORT_TEST_SUBSECTIONS),
            "eval": (tmp / "eval.html", EVAL_SECTIONS, ())}


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report_shots")


def _render(browser: Browser, pages: dict, name: str, width: int, shots_dir: Path) -> Rendered:
    page = pages[name][0]
    out = browser.render(page, width, shots_dir / f"{name}_{width}.png")
    if os.environ.get("CXR_REPORT_SHOTS"):
        keep = Path(os.environ["CXR_REPORT_SHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out.shot, keep / out.shot.name)
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["report", "report_test", "eval"])
def test_page_renders_whole_and_readable(browser, pages, shots_dir, name, width):
    r = _render(browser, pages, name, width, shots_dir)
    dom, expected, sub = r.dom, pages[name][1], pages[name][2]
    assert r.shot_spread() > 20 and r.ink() > 0.02, f"{r.shot}: the page looks blank"
    assert dom["h1"] and dom["text_len"] > 500, dom
    assert [h for h in dom["h2"] if h in expected] == list(expected), f"<h2>s {dom['h2']}, expected {expected}"
    missing = [s for s in sub if s not in dom["h3"]]
    assert not missing, f"subsections {missing} not in the page's <h3>s {dom['h3']}"
    assert not dom["empty_headings"], f"headings with nothing under them: {dom['empty_headings']}"
    assert not dom["errors"], f"sections that could not be built: {dom['errors']}"
    assert dom["images"], "no <img> in the page"
    broken = [i["alt"] for i in dom["images"] if not i["ok"]]
    assert not broken, f"images that did not decode: {broken}"
    assert not r.console_errors, r.console_errors
    assert not r.remote_requests, f"the page is not self-contained: {r.remote_requests}"
    assert dom["scroll_width"] <= dom["viewport"] + 2, f"{dom['scroll_width']} px wide at {width}: {dom['wide']}"
    assert not dom["wide"], f"elements past the right edge at {width} px: {dom['wide']}"
    shrunk = [(i["alt"], round(i["w"] / i["natural_w"], 2)) for i in dom["images"]
              if i["w"] < MIN_IMAGE_SCALE * i["natural_w"]]
    assert not shrunk, f"images scaled below {MIN_IMAGE_SCALE} at {width} px, their text unreadable: {shrunk}"
    assert dom["font_px"] >= 12, dom["font_px"]


def test_checks_catch_a_broken_page(browser, tmp_path):
    """The probe sees a broken image, a console error, a remote request, a too-wide table and a squeezed image."""
    buf = io.BytesIO()
    Image.new("L", (2000, 20), 128).save(buf, "PNG")
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><h1>bad</h1><img alt="x" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script><img alt="cdn" src="https://cdn.example.invalid/a.png">'
                    f'<img alt="big" style="max-width:100%" src="data:image/png;base64,{b64encode(buf.getvalue()).decode()}">'
                    '<table style="width:3000px"><tr><td>wide</td></tr></table><h2>empty</h2><section><h2>next</h2>'
                    '<p>text</p></section></body></html>')
    r = browser.render(page, 800, tmp_path / "bad.png")
    assert [i["ok"] for i in r.dom["images"]] == [False, False, True]
    assert r.dom["images"][2]["natural_w"] == 2000 and r.dom["images"][2]["w"] < MIN_IMAGE_SCALE * 2000
    assert any("boom" in e for e in r.console_errors)
    assert r.remote_requests == ["https://cdn.example.invalid/a.png"]
    assert r.dom["scroll_width"] > 800 and "table" in r.dom["wide"]
    assert r.dom["empty_headings"] == ["empty"]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert browser.render(blank, 800, tmp_path / "blank.png").shot_spread() == 0
