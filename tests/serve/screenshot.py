"""The README's picture of the page: `python tests/serve/screenshot.py [docs/images/serve.png]`.

Serves the shipped default bundle, generates eight images of its first class in headless chromium,
and saves a screenshot of the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from selenium.webdriver.common.by import By  # noqa: E402
from serve_browser import chromium, fill, generate, open_page  # noqa: E402

from bench.serve import ServerProcess  # noqa: E402
from latent_onnx.bundle import DEFAULT_BUNDLE  # noqa: E402


def main(out: Path) -> None:
    with ServerProcess(DEFAULT_BUNDLE) as server:
        driver = chromium(1180, 900)
        try:
            open_page(driver, server.url)
            driver.find_elements(By.CSS_SELECTOR, "#class-chips button")[7].click()
            fill(driver, "count", 8)
            fill(driver, "seed", 1)
            generate(driver, 8)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images" / "serve.png")
