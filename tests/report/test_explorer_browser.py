"""The explorer in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs where missing) driven by selenium over
the report of a run of the default model, and over a comparison page.

Checks: the page loads from disk without console errors, picking a channel and a head
changes what the canvases hold, hovering shows a value, and a screenshot is saved as a
test artefact (``$VITPROBE_TEST_ARTEFACTS`` or pytest's temporary folder; the path is
printed). Skips, saying why, where no browser, driver or selenium is installed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,1600")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    if BROWSER is None or DRIVER is None:
        pytest.skip("no headless browser: Debian's chromium and chromium-driver are not "
                    "installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VITPROBE_TEST_ARTEFACTS", tmp_path / "artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    t0 = time.monotonic()
    state = "0"
    while time.monotonic() - t0 < 60:
        state = driver.execute_script("return document.getElementById('explorer').dataset.ready")
        if state != "0":
            break
        time.sleep(0.1)
    assert state == "1", f"explorer did not start (state {state!r}): {_errors(driver)}"


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _canvases(driver, *ids: str) -> dict[str, str]:
    return {i: driver.execute_script(f"return document.getElementById('{i}').toDataURL()")
            for i in ids}


def _choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def test_default_run_report_in_chromium(browser, trained_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, trained_run / "report.html")
    assert _errors(browser) == []
    # offline: the page fetched nothing beyond itself (its images are data: URIs)
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(("data:", "file:")) for u in fetched), fetched
    neuron = _canvases(browser, "ex-mi", "ex-hist")
    head = _canvases(browser, "ex-spectra", "ex-angles")
    measures = browser.find_element("id", "ex-measures").text
    # it opened on a channel with saved bowties: they are drawn
    assert browser.find_elements("id", "ex-bowtie-0")
    # another channel: the neuron's plots change, the head's do not
    current = browser.find_element("id", "ex-channel").get_attribute("value")
    _choose(browser, "ex-channel", "7" if current != "7" else "8")
    after = _canvases(browser, "ex-mi", "ex-hist")
    assert after["ex-mi"] != neuron["ex-mi"] and after["ex-hist"] != neuron["ex-hist"]
    assert _canvases(browser, "ex-spectra", "ex-angles") == head
    picked = "7" if current != "7" else "8"
    assert f"channel {picked}:" in browser.find_element("id", "ex-neuron-info").text
    # another head: its spectra and angle distribution change
    _choose(browser, "ex-head", "3")
    changed = _canvases(browser, "ex-spectra", "ex-angles")
    assert changed["ex-spectra"] != head["ex-spectra"]
    assert changed["ex-angles"] != head["ex-angles"]
    assert browser.find_element("id", "ex-measures").text != measures
    # another layer and sublayer redraw the neuron again
    _choose(browser, "ex-layer", "5")
    _choose(browser, "ex-sublayer", "1")
    assert _canvases(browser, "ex-mi")["ex-mi"] != after["ex-mi"]
    # the control model: another set of curves
    _choose(browser, "ex-model", "1")
    assert _canvases(browser, "ex-spectra")["ex-spectra"] != changed["ex-spectra"]
    _choose(browser, "ex-model", "0")
    # hover over the spectra: a tooltip with a value
    canvas = browser.find_element("id", "ex-spectra")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    width = canvas.size["width"]
    ActionChains(browser).move_to_element_with_offset(canvas, -width // 2 + 62, -110).perform()
    tips = [t.text for t in browser.find_elements("css selector", ".ex-tip") if t.text]
    assert any("mode" in t for t in tips), tips
    assert _errors(browser) == []
    section = browser.find_element("id", "explorer")
    browser.execute_script("arguments[0].scrollIntoView()", section)
    shot = _artefacts(tmp_path) / "explorer_default_run.png"
    section.screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    print(f"explorer screenshot: {shot}")


def test_comparison_page_in_chromium(browser, trained_run, shallow_run, tmp_path):
    from vitprobe.report.compare import compare

    page = compare([trained_run, shallow_run], tmp_path / "cmp", pdf=False)
    _open(browser, page)
    assert _errors(browser) == []
    before = _canvases(browser, "ex-mi", "ex-spectra")
    _choose(browser, "ex-model", "1")  # the 6-layer model: fewer layers to pick from
    layers = browser.find_elements("css selector", "#ex-layer option")
    assert len(layers) == 6
    after = _canvases(browser, "ex-mi", "ex-spectra")
    assert after["ex-mi"] != before["ex-mi"] and after["ex-spectra"] != before["ex-spectra"]
    assert _errors(browser) == []
    shot = _artefacts(tmp_path) / "comparison.png"
    browser.save_screenshot(str(shot))
    print(f"comparison screenshot: {shot}")
