"""Headless Debian chromium driven by Selenium through the system chromedriver (nothing is downloaded)."""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def chromium(width: int = 1280, height: int = 860) -> webdriver.Chrome:
    """A headless chromium window of the given size."""
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def open_page(driver: webdriver.Chrome, url: str) -> None:
    """Load the page and wait until it has listed the bundles and the classes of the first."""
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def fill(driver: webdriver.Chrome, element_id: str, text) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(text))


def generate(driver: webdriver.Chrome, count: int, timeout_s: float = 60) -> list:
    """Click Generate and wait for `count` images; the figures."""
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, timeout_s).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#results figure img")) == count
            or "error" in d.find_element(By.ID, "status").get_attribute("class")
        )
    )
    return driver.find_elements(By.CSS_SELECTOR, "#results figure")
