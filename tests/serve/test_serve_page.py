"""The page of `latent-onnx serve` in a real headless browser (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import base64

import httpx
import pytest

pytest.importorskip("selenium", reason="the test extra is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_browser import BROWSER, DRIVER, chromium, fill, generate, open_page  # noqa: E402

pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER), reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def chip(driver, container: str, text: str):
    return next(b for b in driver.find_elements(By.CSS_SELECTOR, f"#{container} button") if b.text == text)


def test_pick_a_class_generate_and_get_the_images(browser, server):
    open_page(browser, server.url)
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#class-chips button")] == [
        "sneaker",
        "sandal",
        "ankle boot",
    ]
    chip(browser, "class-chips", "sandal").click()
    fill(browser, "count", 3)
    fill(browser, "seed", 4)
    fill(browser, "steps", 12)
    figures = generate(browser, 3)
    assert browser.find_element(By.ID, "status").text == "3 image(s), seed 4, 12 sgld steps"
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png;base64,")
    sizes = [
        browser.execute_script("return arguments[0].naturalWidth", f.find_element(By.TAG_NAME, "img")) for f in figures
    ]
    assert sizes == [4, 4, 4]  # decoded PNGs of the tiny bundle's 4x4 images
    expected = httpx.post(
        server.url + "/v1/generate", json={"classes": "sandal", "n": 3, "seed": 4, "steps": 12}
    ).json()
    links = [f.find_element(By.CSS_SELECTOR, "a.download") for f in figures]
    assert [link.get_attribute("download") for link in links] == [
        "tiny-s4-0000.png",
        "tiny-s4-0001.png",
        "tiny-s4-0002.png",
    ]
    assert [base64.b64decode(link.get_attribute("href").split(",", 1)[1]) for link in links] == [
        base64.b64decode(image["png"]) for image in expected["images"]
    ]
    commands = [f.find_element(By.CSS_SELECTOR, "button.copy").get_attribute("data-command") for f in figures]
    assert commands == [image["command"] for image in expected["images"]]


def test_a_caption_from_the_word_suggestions(browser, server):
    open_page(browser, server.url)
    browser.find_element(By.ID, "mode-caption").click()
    for word in ("a", "blue", "sandal"):
        chip(browser, "word-chips", word).click()
    assert browser.find_element(By.ID, "caption").get_attribute("value") == "a blue sandal"
    fill(browser, "count", 2)
    fill(browser, "steps", 5)
    assert len(generate(browser, 2)) == 2


def test_text_from_users_is_shown_as_text_never_as_html(browser, server):
    open_page(browser, server.url)
    attack = '<img src=x onerror="document.body.dataset.pwned=1">'
    fill(browser, "classes", attack)
    fill(browser, "steps", 2)
    generate(browser, 0)
    status = browser.find_element(By.ID, "status")
    assert attack in status.text and "unknown class" in status.text
    assert status.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned") is None


def test_stop_cancels_the_chains(browser, tiny_bundle):
    from bench.serve import ServerProcess

    with ServerProcess(tiny_bundle, "--max-steps", "1000000") as slow:
        open_page(browser, slow.url)
        fill(browser, "classes", "sneaker")
        fill(browser, "steps", 1_000_000)
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text.startswith("step "))
        browser.find_element(By.ID, "stop").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "status").text == "stopped")
        WebDriverWait(browser, 10, poll_frequency=0.1).until(
            lambda d: httpx.get(slow.url + "/v1/health").json()["jobs"] == 0
        )


def test_the_steps_shown_are_the_bundles_defaults_for_the_kind_of_condition(browser, tmp_path):
    from runtime_bundles import edit_manifest, write_tiny_bundle

    from bench.serve import ServerProcess

    root = tmp_path / "tiny"
    write_tiny_bundle(root)
    edit_manifest(root, lambda m: m.update(sampler_by_condition={"caption": {"steps": 7}}))
    with ServerProcess(root) as served:
        open_page(browser, served.url)
        class_steps = browser.find_element(By.ID, "steps").get_attribute("value")
        assert class_steps != "7"
        browser.find_element(By.ID, "mode-caption").click()
        assert browser.find_element(By.ID, "steps").get_attribute("value") == "7"
        browser.find_element(By.ID, "mode-class").click()
        assert browser.find_element(By.ID, "steps").get_attribute("value") == class_steps
