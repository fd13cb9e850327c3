"""End to end in a real headless browser: Debian's chromium + chromium-driver, driven by Selenium.

The page is served by uvicorn on a free loopback port; the test uploads an image through the page's file
input, waits for the grid of k thumbnails, then clicks a result to search by it. Skipped, saying why, where
chromium, chromedriver or selenium is missing (`.ci/run` installs them).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
N_IMAGES = 24
K = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium browser (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="needs chromedriver (apt-get install chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
uvicorn = pytest.importorskip("uvicorn", reason="needs uvicorn (pip install uvicorn)")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from bganhash.collection import BuildConfig, build_collection  # noqa: E402
from bganhash.features.config import FeatureConfig  # noqa: E402
from bganhash.serve.app import create_app  # noqa: E402
from conftest import write_digits  # noqa: E402

WAIT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A folder of digits upscaled to 48x48 PNGs, for the whole module."""
    folder = tmp_path_factory.mktemp("browser") / "digits"
    write_digits(folder, range(N_IMAGES), size=48)
    return folder


def served(photos: Path):
    """Index `photos` (LSH, 32 bits) and serve it on a free loopback port: yields the base URL."""
    out = photos.parent / f"{photos.name}.index"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(photos.parent / "cache"))
        build_collection(photos, out, config=BuildConfig(method="lsh", n_bits=32),
                         feature_config=FeatureConfig(image_size=32), progress=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(out), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(digits) -> str:
    yield from served(digits)


@pytest.fixture(scope="module")
def copies_url(tmp_path_factory) -> str:
    """A service over 6 digits and one exact copy of 0002.png."""
    folder = tmp_path_factory.mktemp("browser-copies") / "photos"
    written = write_digits(folder, range(6), size=48)
    shutil.copy(written[2], folder / "copy-of-0002.png")
    yield from served(folder)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="bganhash-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def result_cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def card_texts(driver) -> list[str]:
    """The captions of the result grid, read in one script call (the grid is replaced on every search)."""
    return driver.execute_script("return [...document.querySelectorAll('#results .result')].map(c => c.innerText);")


def loaded_thumbnails(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .result img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length;")


def test_uploading_through_the_page_shows_k_thumbnails_and_clicking_one_searches_by_it(browser, base_url, digits):
    browser.get(base_url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: "images" in d.find_element(By.ID, "info").text)
    assert f"{N_IMAGES} images" in browser.find_element(By.ID, "info").text

    browser.find_element(By.ID, "file").send_keys(str(digits / "0007.png"))
    wait.until(lambda d: len(result_cards(d)) == K and loaded_thumbnails(d) == K)
    cards = result_cards(browser)
    assert "0007.png" in cards[0].text and "distance 0" in cards[0].text
    assert "results for 0007.png" in browser.find_element(By.ID, "status").text

    clicked_path = cards[4].find_element(By.TAG_NAME, "img").get_attribute("alt")
    cards[4].click()
    wait.until(lambda d: (texts := card_texts(d)) and clicked_path in texts[0] and "distance 0" in texts[0])
    wait.until(lambda d: loaded_thumbnails(d) == K)
    assert len(card_texts(browser)) == K


def test_a_bad_upload_shows_the_services_error_and_the_page_keeps_working(browser, base_url, digits, tmp_path):
    browser.get(base_url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    wait.until(lambda d: "error 415" in d.find_element(By.ID, "status").text)
    assert "not an image" in browser.find_element(By.ID, "status").text and not result_cards(browser)

    browser.find_element(By.ID, "file").send_keys(str(digits / "0003.png"))
    wait.until(lambda d: len(card_texts(d)) == K)
    assert "0003.png" in card_texts(browser)[0]


def test_the_search_page_links_to_the_duplicates_page_which_shows_the_copies(browser, copies_url):
    browser.get(copies_url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: "7 images" in d.find_element(By.ID, "info").text)
    browser.find_element(By.LINK_TEXT, "duplicates").click()
    wait.until(lambda d: d.current_url.rstrip("/").endswith("/duplicates"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#groups .group"))
    groups = browser.find_elements(By.CSS_SELECTOR, "#groups .group")
    assert "exact copies" in groups[0].text and "2 images" in groups[0].text
    wait.until(lambda d: d.execute_script(  # the group's two thumbnails, loaded and decoded
        "const images = [...document.querySelector('#groups .group').querySelectorAll('img')];"
        "return images.length === 2 && images.every(img => img.complete && img.naturalWidth > 0);"))
    captions = [img.get_attribute("alt") for img in groups[0].find_elements(By.TAG_NAME, "img")]
    assert sorted(captions) == ["0002.png", "copy-of-0002.png"]
    status = browser.find_element(By.ID, "status").text
    assert "(1 exact)" in status and "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    assert browser.execute_script(  # the shared style sheet is applied
        "return getComputedStyle(document.body).getPropertyValue('--accent').trim();") == "#0a66c2"
