"""The real app in headless Chromium: the digits flow from Setup to a downloaded curated index.

Starts ``streamlit run run_app.py`` on a free port of 127.0.0.1 with a temporary workspace and
drives it with Playwright. Screenshots of every page go to ``test-artifacts/``. The test is
skipped when ``/usr/bin/chromium`` or the ``playwright`` package is missing; it never downloads a
browser.
"""

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from curator import export, runs
from curator.store import Store

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SERVER_TIMEOUT = 60
# Milliseconds, as Playwright counts. Jobs get minutes because they train and score on the CPU.
PAGE_TIMEOUT = 60_000
JOB_TIMEOUT = 300_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium package to run the browser test")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing; install the project's test extra")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while True:
        assert server.poll() is None, f"streamlit exited with {server.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"streamlit did not serve {url} within {SERVER_TIMEOUT} s"
        time.sleep(0.2)


@pytest.fixture
def app_url(app_workspace, tmp_path):
    """Serve the app on a free port of 127.0.0.1 with ``app_workspace``; stop it afterwards."""
    _require_browser()
    port = _free_port()
    log = tmp_path / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "run_app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    env = {**os.environ, "CURATOR_WORKSPACE": str(app_workspace.root)}
    with open(log, "wb") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture
def page():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        context.set_default_timeout(PAGE_TIMEOUT)
        yield context.new_page()
        context.close()
        browser.close()


def settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def go_to(page, title: str, heading: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=heading).wait_for()
    settle(page)


def choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def type_number(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    settle(page)


def test_digits_flow_in_browser(app_url, app_workspace, page, tmp_path):
    store = Store(app_workspace)

    # Setup: the product explained, tiny settings, then round 1 and scoring as a child-process job.
    page.goto(app_url)
    page.get_by_role("heading", name="Data Dropout Curator").wait_for()
    settle(page)
    screenshot(page, "1-setup")
    choose(page, "Model", "logreg")
    type_number(page, "Epochs per round", "2")
    type_number(page, "Damping", "1")
    page.get_by_role("button", name="Start round 1 and scoring").click()
    page.get_by_text(re.compile(r"^(Round 1 training|Solving for the influence direction|Scoring training samples): "
                                r"\d+/\d+")).wait_for(timeout=JOB_TIMEOUT)
    assert page.locator('[data-testid="stProgress"]').is_visible()
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Run id:").is_visible()
    screenshot(page, "2-setup-job-running")
    page.get_by_text("Round 1 and scoring finished").wait_for(timeout=JOB_TIMEOUT)
    run_id = runs.latest_run_id(store)
    assert runs.get_run(store, run_id)["config"]["model"] == "logreg"

    # Review: the gallery of the most unfavorable images, one override, then approval.
    go_to(page, "Review", "Review the drop set")
    images = page.locator('[data-testid="stImage"] img')
    images.nth(19).wait_for()
    screenshot(page, "3-review-summary")
    page.get_by_role("heading", name="Images by influence").scroll_into_view_if_needed()
    screenshot(page, "4-review-gallery")
    page.get_by_role("button", name="Keep", exact=True).first.click()
    page.get_by_role("button", name="Undo", exact=True).first.wait_for()
    settle(page)
    overrides = store.query("SELECT count(*) AS n FROM decisions WHERE run_id = ? AND source = 'person'", [run_id])
    assert overrides["n"].iloc[0] == 1
    confirm = page.get_by_text("I have read the warnings above")
    if confirm.count():
        confirm.click()
        settle(page)
    page.get_by_role("button", name="Approve drop set").click()
    page.get_by_text("Approved drop set #").wait_for()
    screenshot(page, "5-review-approved")

    # Round two: a second job, then the comparison of both rounds.
    go_to(page, "Round two", "Round two")
    page.get_by_role("button", name="Start round 2 with this drop set").click()
    page.get_by_role("heading", name="Round 1 against round 2").wait_for(timeout=JOB_TIMEOUT)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    charts.nth(3).wait_for()
    settle(page)
    assert charts.count() == 4
    screenshot(page, "6-round-two")

    # Export: the downloaded CSV is the store's curated index.
    go_to(page, "Export", "Export the curated index")
    page.locator('[data-testid="stDataFrame"]').wait_for()
    settle(page)
    screenshot(page, "7-export")
    with page.expect_download() as download_info:
        page.locator('[data-testid="stDownloadButton"]').filter(has_text="CSV").get_by_role("button").click()
    path = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(path)
    downloaded = pd.read_csv(io.BytesIO(path.read_bytes()))
    stored = export.curated_index(store, run_id)
    assert path.name.startswith(f"curated-{run_id}-")
    assert downloaded["index"].tolist() == stored["index"].tolist()
    assert downloaded["decision"].tolist() == stored["decision"].tolist()
    assert (downloaded["decision"] == "drop").sum() == int(store.query(
        "SELECT n_drop FROM approvals WHERE run_id = ?", [run_id])["n_drop"].iloc[0])
