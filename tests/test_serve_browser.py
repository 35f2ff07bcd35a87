"""The page of ``camloc serve`` in a real browser: Playwright driving Debian's Chromium
against a live uvicorn on 127.0.0.1 (``scripts/setup-system.sh`` installs Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright import sync_api as playwright_sync
from serve_helpers import live_server, shared_model

import camloc
from camloc.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium: run scripts/setup-system.sh")

# Canvas fingerprint: size, share of opaque pixels, distinct colours, a checksum.
CANVAS_STATS = """() => {
  const canvas = document.getElementById("overlay");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let opaque = 0, sum = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) opaque++;
    sum = (sum * 31 + data[i] * 3 + data[i + 1] * 5 + data[i + 2] * 7) % 1000000007;
    if (i % 64 === 0) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  }
  return {width: canvas.width, height: canvas.height, opaque: opaque / (data.length / 4),
          colours: colours.size, checksum: sum};
}"""


@pytest.fixture(scope="module")
def base_url():
    with live_server(create_app(shared_model())) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    refused = []  # the Content-Security-Policy must not block anything the page does
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.set_default_timeout(60_000)
    response = page.goto(base_url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    yield page
    context.close()
    assert refused == []


def current_box(page) -> list[int] | None:
    return json.loads(page.locator("#box").get_attribute("data-box"))


def area(box: list[int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def test_upload_predictions_overlay_sliders_and_screenshot(page, tmp_path):
    photo = EXAMPLES / "chelsea_cat.jpg"
    [expected] = camloc.explain(shared_model(), photo, topk=5)

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#overlay[data-drawn]")
    labels = page.locator("#predictions .label").all_inner_texts()
    assert labels == [t.label for t in expected.targets]
    assert page.locator("#predictions .selected .label").inner_text() == expected.targets[0].label

    drawn = page.evaluate(CANVAS_STATS)
    assert (drawn["width"], drawn["height"]) == expected.size
    assert drawn["opaque"] == 1.0 and drawn["colours"] > 500  # a real blended picture
    # The box computed in the browser from the map PNG matches the library's box.
    assert current_box(page) is not None
    differences = [a - b for a, b in zip(current_box(page), expected.boxes[0][0], strict=True)]
    assert max(map(abs, differences)) <= 2
    # The slider starts where the server's rule (Otsu, for the default walkcam) put this map.
    assert page.locator("#threshold-value").inner_text().endswith(" (otsu)")
    scale_pixels = page.evaluate("""() => Array.from(document.getElementById("scale")
        .getContext("2d").getImageData(0, 7, 256, 1).data)""")
    assert scale_pixels[:3] == camloc.render.colormap_lut("jet")[0].tolist()  # colour scale drawn

    # Opacity slider (keyboard, as a person would): the overlay changes without a request.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.locator("#opacity").press("End")
    assert page.locator("#opacity-value").inner_text() == "1.00"
    after_opacity = page.evaluate(CANVAS_STATS)
    assert after_opacity["checksum"] != drawn["checksum"]

    # Threshold slider: a higher threshold gives a smaller box.
    low_box = current_box(page)
    page.locator("#threshold").fill("0.7")
    high_box = current_box(page)
    assert high_box is not None and area(high_box) < area(low_box)
    assert page.locator("#threshold-value").inner_text() == "0.70"

    # Another class: its own map.
    page.locator("#predictions button.prediction").nth(1).click()
    assert page.locator("#predictions .selected .label").inner_text() == expected.targets[1].label
    assert page.evaluate(CANVAS_STATS)["checksum"] != after_opacity["checksum"]
    assert not [url for url in requests if "/api/explain" in url]  # all of it client-side

    page.locator("#opacity").fill("0.5")
    page.locator("#threshold").fill("0.2")
    page.locator("#predictions button.prediction").nth(0).click()
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_sample_photo_and_errors_on_the_page(page, tmp_path):
    page.wait_for_selector("#samples button[data-sample=coffee]")
    page.click("#samples button[data-sample=coffee]")
    page.wait_for_selector("#predictions button.prediction")
    assert page.locator("#predictions .label").first.inner_text() == "espresso"
    assert page.locator("#error").is_hidden()

    # Drag and drop: a real File in a DataTransfer, dropped on the drop zone.
    page.evaluate("""async () => {
      const blob = await (await fetch("/samples/rocket.jpg")).blob();
      const transfer = new DataTransfer();
      transfer.items.add(new File([blob], "dropped-rocket.jpg", {type: "image/jpeg"}));
      document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('dropped')")
    [rocket] = camloc.explain(shared_model(), EXAMPLES / "rocket.jpg")
    assert page.locator("#predictions .label").first.inner_text() == rocket.targets[0].label

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not a picture")
    page.set_input_files("#file", str(not_an_image))
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.txt: unsupported type text/plain" in page.locator("#error").inner_text()

    page.fill("#class", "no such class")
    page.set_input_files("#file", str(EXAMPLES / "coffee.jpg"))
    page.wait_for_function("() => document.getElementById('error').textContent.includes('unknown class')")
    assert page.locator("#error").is_visible()
    page.screenshot(path=str(tmp_path / "serve-error.png"), full_page=True)

    page.fill("#class", "cup")
    page.locator("#class").press("Enter")  # explains the last image again, for this class
    page.wait_for_function("() => document.querySelector('#predictions .label')?.textContent === 'cup'")
    assert page.locator("#error").is_hidden()
