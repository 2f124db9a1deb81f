"""The search page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; nothing is downloaded), against a real ``searchpipe serve`` process on loopback.

``make browser`` installs Chromium when it is missing (root or sudo); without it this test
skips and says so. Set ``SEARCHPIPE_SCREENSHOT=docs/serve-page.png`` to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import oracle

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
QUERY = "why do onions make you cry"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); run 'make browser' "
    "(apt-get install chromium chromium-driver, needs root or sudo)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(sample_home: Path, cross_encoder_dir: Path):
    """``searchpipe serve sample --rerank ...`` as a child process; its URL once ready."""
    port = _free_port()
    cmd = [sys.executable, "-m", "searchpipe", "serve", "sample", "--port", str(port)]
    cmd += ["--index-dir", str(sample_home / "indexes"), "--rerank", str(cross_encoder_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() - t0 < 120, "searchpipe serve did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_search_page_shows_ranked_highlighted_results_and_toggles_rerank(
    server: str, sample_index, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,900")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#index option"))
        rerank = driver.find_element(By.ID, "rerank")
        assert rerank.is_selected()  # the server has a reranker: on by default
        driver.find_element(By.ID, "query").send_keys(QUERY)
        driver.find_element(By.ID, "go").click()
        wait.until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rerank") == "true"
        )

        def shown() -> list[str]:
            return [
                li.get_attribute("data-doc-id")
                for li in driver.find_elements(By.CSS_SELECTOR, "#results li.hit")
            ]

        reranked = shown()
        server_state = httpx.post(
            server + "/v1/indexes/sample/search", json={"query": QUERY, "k": 10}, timeout=60
        ).json()
        assert reranked == [h["doc_id"] for h in server_state["hits"]]
        marks = [
            m.text.lower() for m in driver.find_elements(By.CSS_SELECTOR, "#results .snippet mark")
        ]
        assert marks and all(
            m in ("onion", "onions", "make", "makes", "cry", "cries", "crying") for m in marks
        )
        assert driver.find_elements(By.CSS_SELECTOR, ".score-rerank")
        assert driver.find_element(By.CSS_SELECTOR, "#timings .time-embed").text.endswith("ms")

        rerank.click()  # off: the page searches again, first-stage order only
        wait.until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rerank") == "false"
        )
        plain = shown()
        assert plain == [hit[0] for hit in oracle(sample_index, QUERY, {"k": 10})]
        assert not driver.find_elements(By.CSS_SELECTOR, ".score-rerank")
        # the shot shows the first stage: the test's reranker is untrained, its order is noise
        shot = Path(os.environ.get("SEARCHPIPE_SCREENSHOT") or tmp_path / "serve-page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        rerank.click()
        wait.until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rerank") == "true"
        )
        assert shown() == reranked != plain
    finally:
        driver.quit()
