"""A whole rating session in a real browser: headless Debian Chromium through Selenium against a
real uvicorn server (`server.serve` in a subprocess). Both videos must play and stay within a
frame of each other; votes go in by clicks and by keys; a reload resumes the same pair; the
finished screen and the admin page show the votes. Screenshots go to the test's tmp folder and,
with MV2_SCREENSHOTS=DIR, to DIR (docs/studies.md uses them).

Skipped where chromium or chromedriver is missing, except under CI, where it fails instead.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.studies.conftest import PROMPTS, write_arm

pytestmark = pytest.mark.slow  # ~10 s: a server, a browser and four pairs of videos

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FPS = 8.0  # write_video's default
ADMIN = "admin-token-for-the-browser-test"
# Headless; as root Chromium needs --no-sandbox; muted videos may autoplay without a click.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,1000",
    "--disable-gpu",
)
BOTH = (
    "const l = document.getElementById('video-left'), r = document.getElementById('video-right');"
)


def _require(ok: bool, message: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this test must run; .ci/run installs them)")
    pytest.skip(message)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    _require(not missing, f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A study of 4 pairs (arms A/B, 24 frames of 96x96 at 8 fps), one invited rater, and a
    uvicorn server for it: (base URL, rater token, store, log file)."""
    _require_browser()
    from mv2_jax.studies.store import StudyStore

    items = [(prompt, 0) for prompt in PROMPTS] + [("a yellow star spinning", 0)]
    arms = {
        "A": write_arm(tmp_path / "A", items, 40, frames=24, size=96),
        "B": write_arm(tmp_path / "B", items, 110, frames=24, size=96),
    }
    url = str(tmp_path / "study.db")
    store = StudyStore(url)
    store.create_study("browser", arms, criteria=["visual", "consistency"])
    token = store.invite("browser", "rater-1")
    port = _free_port()
    log = tmp_path / "server.log"
    code = (
        "import os, sys; from mv2_jax.studies.server import serve; "
        "serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]), os.environ['MV2_TEST_ADMIN'])"
    )
    env = {**os.environ, "MV2_TEST_ADMIN": ADMIN}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", code, url, str(port)], stdout=sink, stderr=sink, env=env
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the study server did not start:\n{log.read_text()}")
            time.sleep(0.2)
    yield base, token, store, log
    process.terminate()
    process.wait(timeout=20)
    store.close()


@pytest.fixture
def browser():
    _require_browser()
    try:
        from selenium import webdriver
    except ImportError:
        _require(False, "selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Page:
    """The rating page as the test sees it: waits, reads and screenshots."""

    def __init__(self, driver, shots: Path):
        self.driver, self.shots = driver, shots
        self.extra = (
            Path(os.environ["MV2_SCREENSHOTS"]) if os.environ.get("MV2_SCREENSHOTS") else None
        )

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        self.shot("timeout")
        pytest.fail(f"timed out waiting for {what}; browser log: {self.console()}")

    def shot(self, name: str) -> None:
        for folder in filter(None, (self.shots, self.extra)):
            folder.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(folder / f"study-{name}.png"))

    def console(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def progress(self) -> str:
        return self.js("return document.getElementById('progress-text').textContent")

    def both(self, expression: str) -> list:
        """`expression` of the left (`l`) and the right (`r`) video, read in one script."""
        return self.js(f"{BOTH} return [{expression}]")

    def wait_for_pair(self, number: int) -> None:
        self.wait(
            f"return document.getElementById('progress-text').textContent === '{number} of 4'"
            " && !document.getElementById('study').hidden"
            " && document.getElementById('video-left').readyState >= 2"
            " && document.getElementById('video-right').readyState >= 2",
            f"pair {number} to load",
        )

    def pressed(self) -> list[str | None]:
        """Per criterion row, the vote whose button is pressed (None if none)."""
        return self.js(
            "return Array.from(document.querySelectorAll('fieldset.criterion')).map(row => {"
            " const b = row.querySelector('button[aria-pressed=true]');"
            " return b ? b.dataset.vote : null; })"
        )

    def click_vote(self, row: int, vote: str) -> None:
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, "fieldset.criterion")
        rows[row].find_element(By.CSS_SELECTOR, f"button[data-vote={vote}]").click()

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        for key in keys:
            ActionChains(self.driver).send_keys(key).perform()

    def next_enabled(self) -> bool:
        return not self.js("return document.getElementById('next').disabled")

    def sources(self) -> list[str]:
        return self.both("l.src, r.src")


def _wrapped(a: float, b: float, length: float) -> float:
    d = abs(a - b) % length
    return min(d, length - d)


def test_a_whole_session_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    base, token, store, log = server
    page = Page(browser, tmp_path / "screenshots")
    browser.get(f"{base}/rate?token={token}")
    page.wait_for_pair(1)

    # Both videos play and stay within a frame of each other (a loop's wrap taken into account).
    page.wait(f"{BOTH} return !l.paused && !r.paused && l.currentTime > 0.2", "playback")
    samples = []
    for _ in range(25):
        samples.append(page.both("l.currentTime, r.currentTime, l.duration, l.paused, r.paused"))
        time.sleep(0.1)
    length = samples[0][2]
    assert length == pytest.approx(24 / FPS, abs=0.05)
    assert not any(s[3] or s[4] for s in samples), "a video stopped playing"
    drifts = [_wrapped(left, right, length) for left, right, *_ in samples]
    assert max(drifts) < 1 / FPS, f"drift up to {max(drifts):.3f} s, over one frame"
    for side in (0, 1):
        moved = sum(_wrapped(a[side], b[side], length) for a, b in itertools.pairwise(samples))
        assert moved > 1.5, f"video {side} advanced {moved:.2f} s in 2.4 s"
    page.shot("rate")
    # The follower pulled off by a lot (seeked back) and by a little (rate nudged) catches up.
    for offset in (0.4, 0.06):
        page.js(f"document.getElementById('video-right').currentTime += {offset}")
        page.wait(
            f"{BOTH} const d = Math.abs(r.currentTime - l.currentTime) % l.duration;"
            f" return !r.seeking && Math.min(d, l.duration - d) < {0.25 / FPS}",
            f"the follower to catch up {offset} s",
            timeout=5,
        )

    # Pair 1 by clicks: Next waits for every criterion.
    assert not page.next_enabled()
    page.click_vote(0, "left")
    assert not page.next_enabled()
    page.click_vote(1, "same")
    assert page.next_enabled() and page.pressed() == ["left", "same"]
    page.shot("voted")
    browser.find_element("id", "next").click()
    page.wait_for_pair(2)

    # Pair 2 by keys: 3 = row one "right better"; the highlight moves on, ↓ = "same".
    assert page.pressed() == [None, None]
    page.keys("3", Keys.ARROW_DOWN)
    assert page.pressed() == ["right", "same"]
    page.keys(Keys.ENTER)
    page.wait_for_pair(3)

    # Pair 3: half voted, then a reload comes back to the same pair, with nothing sent.
    before = page.sources()
    page.keys("1")
    assert page.pressed() == ["left", None]
    browser.refresh()
    page.wait_for_pair(3)
    assert page.sources() == before and page.pressed() == [None, None]
    page.keys("1", "6", Keys.ENTER)
    page.wait_for_pair(4)

    # Pair 4: the transport. Pause, step a frame: both show the same frame, mid-frame.
    browser.find_element("id", "play").click()
    page.wait("return document.getElementById('video-left').paused", "pause")
    page.keys(".")
    page.wait(f"{BOTH} return !l.seeking && !r.seeking", "frame step")
    left, right = page.both("l.currentTime, r.currentTime")
    assert left == pytest.approx(right, abs=1e-3)
    assert (left * FPS) % 1 == pytest.approx(0.5, abs=0.02)
    browser.find_element("css selector", "button[data-speed='0.5']").click()
    assert page.both("l.playbackRate, r.playbackRate") == [0.5, 0.5]
    browser.find_element("id", "full-resolution").click()
    assert page.js("return document.getElementById('video-left').clientWidth") == 96
    page.shot("full-resolution")
    page.click_vote(0, "same")
    page.click_vote(1, "right")
    browser.find_element("id", "next").click()
    page.wait("return !document.getElementById('finished').hidden", "the finished screen")
    assert "4 of 4" in page.js("return document.getElementById('finished-text').textContent")
    page.shot("finished")

    # The store has exactly the votes given, in order; the admin page shows them.
    rows = store.export_rows("browser")
    by_pair: dict[int, dict[str, str]] = {}
    for row in rows:
        by_pair.setdefault(row["pair_id"], {})[row["criterion"]] = row["vote"]
    assert list(by_pair.values()) == [
        {"visual": "left", "consistency": "same"},
        {"visual": "right", "consistency": "same"},
        {"visual": "left", "consistency": "right"},
        {"visual": "same", "consistency": "right"},
    ]
    browser.get(f"{base}/admin?token={ADMIN}")
    done = "document.querySelector('tr[data-rater=\"rater-1\"] td.done')"
    page.wait(f"return {done}", "the admin page")
    assert page.js(f"return {done}.textContent") == "4"
    cells = "document.querySelectorAll('tr[data-pair=\"A|B|visual\"] td')"
    visual = page.js(f"return Array.from({cells}).map(td => td.textContent)")
    good, same, bad = (int(visual[i]) for i in (2, 3, 4))
    assert (good + bad, same) == (3, 1)
    page.shot("admin")
    # A link withdrawn while its page is open: the vote is refused and the rater told why.
    second = store.invite("browser", "rater-2")
    browser.get(f"{base}/rate?token={second}")
    page.wait_for_pair(1)
    store.revoke("browser", "rater-2")
    page.keys("2", "5", Keys.ENTER)
    page.wait("return !document.getElementById('status').hidden", "the error message")
    message = page.js("return document.getElementById('status-text').textContent")
    assert "not valid" in message and "withdrawn" in message
    assert page.progress() == "1 of 4"
    assert {row["rater"] for row in store.export_rows("browser")} == {"rater-1"}
    page.shot("revoked")
    browser.get(f"{base}/instructions")
    page.wait("return document.querySelector('dl.criteria dt')", "the instructions")
    page.shot("instructions")

    problems = [m for m in page.console() if "Content Security Policy" in m or "Uncaught" in m]
    assert not problems, problems
    text = log.read_text()
    assert "GET /rate " in text and "/api/vote" in text  # the access log is on …
    assert token not in text and ADMIN not in text  # … and holds no token
