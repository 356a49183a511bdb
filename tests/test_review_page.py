"""The review page at `/`: its files and headers over HTTP, and a real headless Chromium against a live
`photo-detector serve` (Debian's chromium + chromedriver, driven by selenium; nothing is downloaded).

The browser test skips on a machine without Chromium but fails under CI=true: .ci/run installs it.
Set PHOTO_DETECTOR_SCREENSHOT=docs/review-page.png to keep the page's screenshot (the README shows it).
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_helpers import running, wait_ready

from photo_detector.config import load_config
from photo_detector.serving import page
from photo_detector.serving.app import create_app
from photo_detector.serving.auth import KeyChecker, hash_key

KEY = "review-key-4f1"
HEADERS = {"X-API-Key": KEY}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
STATIC = Path(page.__file__).parent / "static"
MAX_BODY = 400_000
# Without the background-networking flags Chromium keeps calling Google services, which a closed network
# answers with a flood of retries.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1500")


# ---- the page's files, without a browser

class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_the_page_has_no_inline_script_or_style_and_labels_every_control() -> None:
    """What lets the strict CSP hold: every script and style is a file from this origin."""
    parsed = Tags()
    parsed.feed((STATIC / "index.html").read_text())
    tags = parsed.tags
    assert parsed.script_text == ""
    assert [a.get("src") for t, a in tags if t == "script"] == ["/static/review.js"]
    assert [a.get("href") for t, a in tags if t == "link"] == ["/static/review.css"]
    assert not any(t == "style" for t, _ in tags)
    assert not [(t, k) for t, a in tags for k in a if k == "style" or k.startswith("on")]
    assert not re.search(r"https?://", (STATIC / "index.html").read_text() + (STATIC / "review.css").read_text()
                         + (STATIC / "review.js").read_text()), "no CDN: the page must work offline"
    labelled = {a["for"] for t, a in tags if t == "label"}
    inputs = [a["id"] for t, a in tags if t == "input"]
    assert inputs == ["key-input", "file-input"] and set(inputs) <= labelled
    assert dict(tags)["html"].get("lang") == "en"


@pytest.fixture(scope="module")
def service(smoke_model: Path) -> Iterator[tuple[str, httpx.Client]]:
    app = create_app(str(smoke_model), load_config(None, {}), KeyChecker([hash_key(KEY)]))
    with running(app) as url, httpx.Client(timeout=30) as client:
        wait_ready(client, url)
        yield url, client


def test_the_page_and_its_assets_are_public_and_nothing_else_is(service) -> None:
    url, client = service
    for path, (name, media_type) in page.FILES.items():
        r = client.get(url + path)
        assert r.status_code == 200 and r.content == (STATIC / name).read_bytes()
        assert r.headers["content-type"] == media_type
        assert r.headers["content-security-policy"] == page.CSP and r.headers["x-content-type-options"] == "nosniff"
        assert "'unsafe-inline'" not in page.CSP and "script-src 'self'" in page.CSP
    # The API the page calls still needs the key; so do other files that would sit beside the page's.
    for path in ("/model", "/static/", "/static/other.js", "/index.html"):
        assert client.get(url + path).status_code == 401, path
    assert client.post(f"{url}/predict", files={"file": ("x.png", b"")}).status_code == 401
    assert client.post(f"{url}/v1/explain", files={"file": ("x.png", b"")}).status_code == 401


def test_model_info_carries_the_threshold_and_limits_the_page_shows(service) -> None:
    url, client = service
    body = client.get(f"{url}/model", headers=HEADERS).json()
    assert 0 < body["thresholds"]["classification"] < 1
    assert body["limits"] == {"max_body_bytes": 10 * 1024 * 1024, "max_image_pixels": 40_000_000,
                              "max_batch_files": 16, "formats": ["JPEG", "PNG", "WEBP"], "explain_grid": 7}


# ---- in a browser, against `photo-detector serve`

def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan server


def browser_or_fail() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = (f"the browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver "
               "and pip install -e '.[dev]' (.ci/run does both)")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def live(smoke_model: Path) -> Iterator[str]:
    """`photo-detector serve` in its own process, as the serve image runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PHOTO_DETECTOR_API_KEY_HASHES": hash_key(KEY)}
    proc = subprocess.Popen([sys.executable, "-m", "photo_detector", "serve", "--model", str(smoke_model),
                             "--host", "127.0.0.1", "--port", str(port), "--set", f"serve.max_body_bytes={MAX_BODY}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"photo-detector serve never became healthy: {proc.communicate()[1][-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    browser_or_fail()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def photo_file(live: str, smoke_data: Path, folder: Path, label: str) -> Path:
    """A held-out sample photo of `label`, 8x larger so a person can see it on the page: the first that the
    service labels `label` (for the screenshot; the checks hold for any photo), else the first."""
    paths = []
    with httpx.Client(timeout=30) as client:
        for i, source in enumerate(sorted((smoke_data / "test" / label).iterdir())):
            path = folder / f"{label}-photo-{i}.png"
            with Image.open(source) as img:
                img.resize((img.width * 8, img.height * 8), Image.Resampling.NEAREST).save(path)
            paths.append(path)
            r = client.post(f"{live}/predict", files={"file": (path.name, path.read_bytes())}, headers=HEADERS)
            if r.json()["prediction"] == label:
                return path
    return paths[0]


def wait_for(driver, condition, timeout: float = 30, what: str = "the page") -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, f"waiting for {what}")


def enter_key(driver, key: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    status = driver.find_element(By.ID, "key-status")
    driver.execute_script("arguments[0].textContent = ''", status)
    box = driver.find_element(By.ID, "key-input")
    box.send_keys(key, Keys.ENTER)  # from the keyboard: Enter submits the form
    return wait_for(driver, lambda d: status.text, what="the key's status")


def upload(driver, path: Path) -> object:
    """Pick one file; return its result card once it has a verdict or an error."""
    from selenium.webdriver.common.by import By

    before = len(driver.find_elements(By.CSS_SELECTOR, "#results .result"))
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) > before, what="a card")
    card = driver.find_element(By.CSS_SELECTOR, "#results .result")  # the newest is first
    wait_for(driver, lambda d: card.find_element(By.CSS_SELECTOR, ".verdict").get_attribute("data-label")
             or card.find_element(By.CSS_SELECTOR, ".error").is_displayed(), what=f"the verdict on {path.name}")
    return card


@pytest.mark.slow
def test_the_page_in_chromium_shows_predict_s_answer_and_the_map(browser, live: str, smoke_data: Path,
                                                                 tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{live}/")
    assert driver.title.startswith("Photo review")

    # A wrong key: the page says so in words and keeps nothing.
    assert enter_key(driver, "not-the-key").startswith("Wrong key")
    assert driver.execute_script("return sessionStorage.length") == 0

    status = enter_key(driver, KEY)
    assert status.startswith("Key accepted"), status
    assert KEY not in driver.current_url and driver.execute_script(
        "return sessionStorage.getItem('photo-detector.api-key')") == KEY
    # From the keyboard: Tab goes from the key box past its two buttons to the file picker.
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "key-input").click()
    order = []
    for _ in range(3):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.switch_to.active_element.get_attribute("id"))
    assert order == ["key-save", "key-forget", "file-input"], order

    upload(driver, photo_file(live, smoke_data, tmp_path, "real"))
    path = photo_file(live, smoke_data, tmp_path, "ai_generated")
    card = upload(driver, path)
    with httpx.Client(timeout=30) as client:
        expected = client.post(f"{live}/predict", files={"file": (path.name, path.read_bytes())},
                               headers=HEADERS).json()
        thresholds = client.get(f"{live}/model", headers=HEADERS).json()["thresholds"]
    verdict = card.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-label") == expected["prediction"]
    assert verdict.text == {"ai_generated": "AI-generated", "real": "Real photo"}[expected["prediction"]]
    shown = card.find_element(By.CSS_SELECTOR, ".probability").text
    assert re.search(r"P\(ai_generated\) = ([0-9.]+)", shown).group(1) == f"{expected['probability']:.6f}", shown
    assert card.find_element(By.CSS_SELECTOR, ".confidence").text == expected["confidence"]
    assert card.find_element(By.CSS_SELECTOR, ".model-version").text == expected["model_version"]
    marker = card.find_element(By.CSS_SELECTOR, ".bar-threshold").value_of_css_property("left")
    bar = card.find_element(By.CSS_SELECTOR, ".bar").size["width"]
    assert float(marker.removesuffix("px")) == pytest.approx(thresholds["classification"] * (bar - 2), abs=1.5)
    timing = card.find_element(By.CSS_SELECTOR, ".timing").text
    assert all(phase in timing for phase in ("read", "decode", "resize", "normalise", "model")), timing

    # Where the model looks: the overlay appears over the photo with one cell per grid square.
    explain_button = card.find_element(By.CSS_SELECTOR, ".explain-button")
    explain_button.click()
    overlay = card.find_element(By.CSS_SELECTOR, ".overlay")
    wait_for(driver, lambda d: overlay.is_displayed(), what="the occlusion overlay")
    assert len(overlay.find_elements(By.CSS_SELECTOR, ".cell")) == 49
    assert overlay.get_attribute("aria-label").startswith("Occlusion map, 7 by 7")
    frame = card.find_element(By.CSS_SELECTOR, ".photo-frame").size
    assert overlay.size["width"] == pytest.approx(frame["width"] * 0.8, abs=2)  # the 32 px crop of a 40 px square
    screenshot = tmp_path / "review-page.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(screenshot))
    if os.environ.get("PHOTO_DETECTOR_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["PHOTO_DETECTOR_SCREENSHOT"])

    # Readable errors: the format names what is accepted, too large says the limit.
    gif = tmp_path / "animation.gif"
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    error = upload(driver, gif).find_element(By.CSS_SELECTOR, ".error").text
    assert error.startswith("Unsupported format") and "JPEG, PNG, WebP" in error, error
    big = tmp_path / "huge.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    big.write_bytes(buf.getvalue())
    assert big.stat().st_size > MAX_BODY
    error = upload(driver, big).find_element(By.CSS_SELECTOR, ".error").text
    assert error.startswith("Too large") and f"{MAX_BODY / 2**20:.1f} MB" in error, error

    # No script, style or connection was refused by the Content-Security-Policy, and nothing else failed.
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]
              and "413" not in e["message"] and "415" not in e["message"]]
    assert severe == [], severe
