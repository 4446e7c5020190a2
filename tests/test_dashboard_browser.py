"""The dashboard in a real browser: `iamt dashboard` serves a real run, headless Chromium opens
the Overview, Adversarial, Search and Compare pages, and each page must show its heading and
rendered charts, without Streamlit's Deploy button (the toolbar serves in viewer mode).

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them where apt-get works);
skips without them. Screenshots land in the test's tmp directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.test_dashboard_app import search_table, write_search

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOOPBACK = "127.0.0.1"
SERVER_START_S = 60.0
PAGE_LOAD_S = 60.0
RUN_NAME = "tiny"
MEMBER = "study/a"  # a copy of the run as a study's member: what the Compare page pairs with
# The pages under test and how many charts each must render at least; the app picks its page
# and run from the query parameters `page` and `run` (Compare's run B from `against`).
PAGES = {"Overview": 2, "Adversarial": 2, "Search": 2, "Compare": 1, "Study": 1}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, "
        "chromium-driver; `make browser` installs them where apt-get works)",
    ),
]

# Charts of any kind Streamlit draws: Vega-Lite renders into a canvas or an svg.
CHART_SELECTOR = ", ".join(
    f"{container} {surface}"
    for container in ('[data-testid="stVegaLiteChart"]', ".vega-embed")
    for surface in ("canvas", "svg")
)


@dataclass(frozen=True)
class Dashboard:
    url: str
    port: int
    log: Path


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, read from /proc/net/tcp{,6}."""
    addresses: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            if width == 8:  # one little-endian 32-bit word
                addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


def _wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`iamt dashboard` exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer within {SERVER_START_S:.0f} s:\n{log.read_text()}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop `iamt dashboard` and the Streamlit server it started (one process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # whatever is left of the group
    server.wait(timeout=10)


def _write_study_tables(study_dir: Path, member: str) -> None:
    """The study's tables and report from its one member's outcomes, as `iamt study` writes
    them (a one-seed study: its intervals are the images' alone)."""
    from dashboards.study_report import write_study_report
    from iamt.io import write_csv
    from iamt.rundir import RESULTS, STUDY_GRID, STUDY_MEMBERS, STUDY_SEEDS, STUDY_TABLE, read_csv
    from robustness.results import read_parts
    from robustness.study import MemberResults, study_tables

    run_dir = study_dir / STUDY_MEMBERS / member
    parts = read_parts(run_dir, set(read_csv(run_dir / RESULTS)["job_id"]))
    tables = study_tables([MemberResults(member, "base", 0, parts)], n_boot=200)
    write_csv(study_dir / STUDY_TABLE, tables.study)
    write_csv(study_dir / STUDY_SEEDS, tables.seeds)
    write_csv(study_dir / STUDY_GRID, tables.grid)
    write_study_report(study_dir)


@pytest.fixture(scope="module")
def dashboard(
    evaluated_run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    runs = root / "runs"
    shutil.copytree(evaluated_run_dir, runs / RUN_NAME)
    # The fixture's run has no search: its files as a search with evaluate_front leaves them.
    write_search(runs / RUN_NAME, search_table())
    study, member = MEMBER.split("/")
    shutil.copytree(evaluated_run_dir, runs / study / "members" / member)
    _write_study_tables(runs / study, member)
    port = _free_loopback_port()
    log = root / "server.log"
    command = [sys.executable, "-m", "cluster.cli", "dashboard", "--runs", str(runs)]
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://{LOOPBACK}:{port}"
        _wait_until_healthy(url, server, log)
        yield Dashboard(url=url, port=port, log=log)
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


def test_dashboard_binds_to_loopback_only(dashboard: Dashboard) -> None:
    addresses = _listening_addresses(dashboard.port)
    assert addresses == {LOOPBACK}, f"port {dashboard.port} listens on {addresses}"


def _rendered_charts(browser: WebDriver) -> list[WebElement]:
    charts = browser.find_elements(By.CSS_SELECTOR, CHART_SELECTOR)
    return [c for c in charts if c.size["width"] > 0 and c.size["height"] > 0]


@pytest.mark.parametrize("title", PAGES)
def test_page_renders_charts(
    dashboard: Dashboard, driver: WebDriver, title: str, tmp_path: Path
) -> None:
    query = {"page": title, "run": RUN_NAME, "against": MEMBER, "study": MEMBER.split("/")[0]}
    driver.get(f"{dashboard.url}/?{urllib.parse.urlencode(query)}")
    wait = WebDriverWait(driver, PAGE_LOAD_S, poll_frequency=0.5)
    wait.until(
        lambda d: any(title in h.text for h in d.find_elements(By.CSS_SELECTOR, "h1")),
        message=f"no heading {title!r}",
    )
    wait.until(
        lambda d: len(_rendered_charts(d)) >= PAGES[title],
        message=f"fewer than {PAGES[title]} rendered charts on {title!r}",
    )
    # Let the script run finish so the screenshot shows the whole page.
    wait.until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"] button'),
        message="the page never finished running",
    )
    screenshot = tmp_path / f"{title.lower().replace(' ', '_')}.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Page not found" not in body, f"{title}: no such page"
    # An uncaught exception in the app script (st.error messages are content, e.g. the tiny
    # run's failed sanity checks, and may appear).
    errors = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not errors, f"{title}: the app raised:\n" + "\n".join(e.text for e in errors)
    assert len(_rendered_charts(driver)) >= PAGES[title], f"{title}: the charts vanished"
    if title == "Compare":
        assert "Paired differences" in body, "the run and its copy share the test set"
    deploy = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAppDeployButton"]')
    assert not deploy, "the toolbar shows the Deploy button (not in viewer mode)"
