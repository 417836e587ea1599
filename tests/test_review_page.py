"""The review page (web/) in a real headless Chromium against a real TorchServe serving the tiny checkpoint.

Scores read from the page are compared with ``training.infer_single`` run on the same files in a fresh process;
server messages with TorchServe's own answer to the same files; overlay shapes with the sent images' pixel sizes.
Chromium and its driver come from Debian (scripts/ensure_chromium.sh); without them these tests skip.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from model.config import SeverityConfig
from tests.images import ROOT, image_bytes, infer_single_answer, write_request
from web.server import DEFAULT_PORT, PageConfig, bands_from_thresholds, make_server, page_url

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="needs Debian's chromium and chromium-driver (scripts/ensure_chromium.sh)")
WAIT_S = 60
BANDS = bands_from_thresholds(SeverityConfig())


def png(width: int, height: int, seed: int) -> bytes:
    """A ``width`` x ``height`` RGB noise PNG (not square, so a stretched overlay would show)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def gif(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(seed))).convert("P").save(buffer, format="GIF")
    return buffer.getvalue()


@contextmanager
def page_server(config: PageConfig) -> Iterator[str]:
    """web.server on a free loopback port in a thread; yields its origin."""
    server = make_server(config, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(served) -> Iterator[str]:
    with page_server(PageConfig(served.inference_url, bands=BANDS)) as origin:
        yield origin


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/ensure_chromium.sh)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs `pip install selenium` (requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400",
                     "--disable-background-networking", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # no Selenium Manager download
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def driver(browser):
    """The shared browser on a blank page with empty logs and a desktop-sized window."""
    browser.set_window_size(1100, 1400)
    browser.get("about:blank")
    browser.get_log("performance")
    browser.get_log("browser")
    yield browser
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def wait_for(driver, script: str, what: str):
    """Poll a JavaScript expression until it is truthy; fail naming ``what`` and the page's error texts."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {script}"))
    except TimeoutException:
        errors = driver.execute_script("return [...document.querySelectorAll('.field-error, #key-status')]"
                                       ".map(e => e.id + ': ' + e.textContent.trim()).join(' | ')")
        pytest.fail(f"timed out waiting for {what}; page says: {errors}")


def open_page(driver, origin: str, key: str | None) -> None:
    driver.get(f"{origin}/" + (f"#key={urllib.parse.quote(key, safe='')}" if key else ""))
    wait_for(driver, "document.body.dataset.ready === 'true'", "the page to load its config")


def submit(driver, files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    for modality, path in files.items():
        driver.find_element(By.CSS_SELECTOR, f"input[name={modality}_image]").send_keys(str(path))
    driver.find_element(By.ID, "score-button").click()


def score_on_page(driver, origin: str, key: str, files: dict[str, Path]) -> dict:
    """Upload ``files``, wait for the score and every overlay; return what the page shows."""
    open_page(driver, origin, key)
    submit(driver, files)
    wait_for(driver, "document.querySelector('#score-value').dataset.score", "the score")
    wait_for(driver, f"document.querySelectorAll('img.overlay').length === {len(files)} && "
                     "[...document.querySelectorAll('img.overlay')].every(i => i.complete && i.naturalWidth > 0)",
             "every overlay to be displayed")
    return driver.execute_script("""
        const bars = sel => Object.fromEntries([...document.querySelectorAll(sel + ' .bar')]
            .map(b => [b.className.split(' ')[1], Number(b.dataset.value)]));
        return {score: Number(document.querySelector('#score-value').dataset.score),
                score_text: document.querySelector('#score-value').textContent,
                severity: document.querySelector('#severity').textContent,
                attention: bars('#attention'),
                provenance: document.querySelector('#provenance').textContent};""")


def lesion_files(tmp_path: Path, modalities: tuple[str, ...], seed: int) -> tuple[dict[str, bytes], dict[str, Path]]:
    sizes = {"clinical": (160, 96), "dermoscopy": (90, 90), "multispectral": (72, 120)}
    request = {f"{m}_image": png(*sizes[m], seed=seed * 10 + i) for i, m in enumerate(modalities)}
    return request, write_request(request, tmp_path / "upload")


# -- the score, the overlays and the report ------------------------------------------------------------------------
@needs_browser
@pytest.mark.parametrize("modalities", [("clinical", "dermoscopy"), ("clinical", "dermoscopy", "multispectral")])
def test_the_page_shows_the_score_infer_single_gives_for_the_same_files(driver, page, served, tiny_checkpoint,
                                                                        tmp_path, modalities):
    request, files = lesion_files(tmp_path, modalities, seed=len(modalities))
    shown = score_on_page(driver, page, served.key("inference"), files)
    offline = infer_single_answer(tiny_checkpoint, request, tmp_path / "offline")
    assert shown["score"] == pytest.approx(offline["score"], abs=1e-4)  # the server rounds to 4 decimals
    assert shown["score_text"] == f"{offline['score']:.2f}"
    assert shown["severity"] == offline["severity"]
    for token, weight in offline["attention"].items():
        assert shown["attention"][f"token-{token}"] == pytest.approx(weight, abs=1e-4)
    assert "Model version tiny-test" in shown["provenance"]


@needs_browser
def test_overlays_are_displayed_beside_the_photos_at_the_photos_aspect_ratio(driver, page, served, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy", "multispectral"), seed=7)
    score_on_page(driver, page, served.key("inference"), files)
    shown = driver.execute_script("""
        return [...document.querySelectorAll('figure.pair')].map(f => {
          const photo = f.querySelector('img.photo'), overlay = f.querySelector('img.overlay');
          const box = img => img.getBoundingClientRect();
          return {modality: f.dataset.modality, natural: [overlay.naturalWidth, overlay.naturalHeight],
                  overlay: [box(overlay).width, box(overlay).height], photo: [box(photo).width, box(photo).height],
                  side_by_side: Math.abs(box(photo).top - box(overlay).top) < 1 &&
                    box(photo).right <= box(overlay).left};
        });""")
    assert [item["modality"] for item in shown] == ["clinical", "dermoscopy", "multispectral"]
    for item in shown:
        width, height = Image.open(files[item["modality"]]).size
        assert tuple(item["natural"]) == (width, height)  # the overlay is drawn over the sent image, same size
        for rendered in (item["overlay"], item["photo"]):
            assert rendered[0] > 100  # displayed, not a thumbnail or a hidden image
            assert rendered[0] / rendered[1] == pytest.approx(width / height, rel=0.02)
        assert item["side_by_side"]


@needs_browser
def test_the_print_layout_is_one_page_with_photos_overlays_score_and_model_version(driver, page, served, tmp_path):
    from selenium.webdriver.common.print_page_options import PrintOptions

    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy", "multispectral"), seed=9)
    score_on_page(driver, page, served.key("inference"), files)
    options = PrintOptions()
    options.page_width, options.page_height = 21.0, 29.7  # A4, cm
    pdf = base64.b64decode(driver.print_page(options))
    assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) == 1

    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    visible = driver.execute_script("""
        const shown = sel => [...document.querySelectorAll(sel)].filter(e => e.getClientRects().length > 0).length;
        return {form: shown('#lesion-form'), buttons: shown('button'), photos: shown('img.photo'),
                overlays: shown('img.overlay'), score: shown('#score-value'), scale: shown('#scale'),
                version: document.querySelector('#provenance').innerText};""")
    assert visible["form"] == visible["buttons"] == 0
    assert visible["photos"] == visible["overlays"] == 3 and visible["score"] == visible["scale"] == 1
    assert "tiny-test" in visible["version"]


# -- errors next to their field, and the key -----------------------------------------------------------------------
@needs_browser
def test_an_unsupported_file_shows_the_servers_message_beside_its_field(driver, page, served, tmp_path):
    files = {"clinical": tmp_path / "clinical.png", "dermoscopy": tmp_path / "dermoscopy.gif"}
    files["clinical"].write_bytes(png(120, 80, seed=1))
    files["dermoscopy"].write_bytes(gif(2))
    direct = requests.post(f"{served.inference_url}/predictions/pigment", headers=served.auth(), timeout=60,
                           files={f"{m}_image": (p.name, p.read_bytes()) for m, p in files.items()})
    assert direct.status_code == 415 and direct.json()["field"] == "dermoscopy_image"

    open_page(driver, page, served.key("inference"))
    submit(driver, files)
    wait_for(driver, "document.querySelector('#dermoscopy_image-error').textContent", "the field's error")
    shown = driver.execute_script("""
        const error = document.querySelector('#dermoscopy_image-error');
        return {message: error.textContent, in_field: error.closest('fieldset').dataset.field,
                visible: error.getClientRects().length > 0,
                others: ['#clinical_image-error', '#multispectral_image-error', '#form-error']
                         .map(s => document.querySelector(s).textContent).join(''),
                result_hidden: document.querySelector('#result').hidden};""")
    assert shown["message"] == direct.json()["error"]
    assert shown["in_field"] == "dermoscopy_image" and shown["visible"]
    assert shown["others"] == "" and shown["result_hidden"]


@needs_browser
def test_a_wrong_key_says_it_is_invalid_or_expired_and_how_to_get_a_new_one(driver, page, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical",), seed=3)
    open_page(driver, page, "not-the-key")
    submit(driver, files)
    wait_for(driver, "document.querySelector('#key-status').dataset.problem === 'refused'", "the refused-key message")
    text = driver.execute_script("return document.querySelector('#key-status').innerText")
    assert "refused" in text and "expired" in text and "make serve" in text
    assert "Token Authorization failed" in text  # TorchServe's own words, passed through
    assert driver.execute_script("return document.querySelector('#result').hidden")


@needs_browser
def test_the_key_is_taken_out_of_the_address_and_kept_nowhere_but_memory(driver, page, served):
    open_page(driver, page, served.key("inference"))
    assert driver.current_url == f"{page}/"
    stored = driver.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie, history.length]")
    assert stored[:3] == [0, 0, ""]
    assert driver.execute_script("return document.querySelector('#key-status').hidden")

    open_page(driver, page, None)
    assert "has no key" in driver.execute_script("return document.querySelector('#key-status').innerText")


# -- where requests go, and a phone ---------------------------------------------------------------------------------
@needs_browser
def test_no_request_leaves_the_pages_own_origin(driver, page, served, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy"), seed=5)
    score_on_page(driver, page, served.key("inference"), files)
    urls = [message["params"]["request"]["url"]
            for message in (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
            if message["method"] == "Network.requestWillBeSent"]
    fetched = [url for url in urls if not url.startswith(("data:", "blob:"))]
    assert {f"{page}/", f"{page}/app.js", f"{page}/style.css", f"{page}/predictions/pigment",
            f"{page}/explanations/pigment"} <= set(fetched)  # the log did record the page's traffic
    assert [url for url in fetched if not url.startswith(f"{page}/")] == []
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


@needs_browser
def test_on_a_phone_sized_screen_the_page_fits_the_width(driver, page, served, tmp_path):
    driver.set_window_size(390, 844)
    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy", "multispectral"), seed=6)
    score_on_page(driver, page, served.key("inference"), files)
    layout = driver.execute_script("""
        const fields = [...document.querySelectorAll('fieldset.field')].map(f => f.getBoundingClientRect());
        return {viewport: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
                stacked: fields.every((r, i) => i === 0 || r.top >= fields[i - 1].bottom),
                widest: Math.max(...[...document.querySelectorAll('main *')]
                    .map(e => e.getBoundingClientRect().right))};""")
    assert layout["viewport"] <= 390
    assert layout["scroll"] <= layout["viewport"] and layout["widest"] <= layout["viewport"]
    assert layout["stacked"]
    cameras = driver.execute_script("return [...document.querySelectorAll('input[type=file][capture]')]"
                                    ".map(i => [i.dataset.cameraFor, i.getAttribute('capture'), i.accept])")
    assert cameras == [[f"{m}_image", "environment", "image/*"] for m in ("clinical", "dermoscopy", "multispectral")]


# -- the trust fields, from a stand-in server that answers exactly the documented shape -----------------------------
TRUST_ANSWER = {"score": 0.58, "severity": "Moderate", "interval": {"low": 0.49, "high": 0.67, "coverage": 0.9},
                "severity_probabilities": {"Mild": 0.04, "Moderate": 0.62, "Severe": 0.34},
                "in_distribution": False, "ood_score": 4.2, "ood_threshold": 3.1,
                "quality_warnings": [{"modality": "dermoscopy", "warning": "blurred"}],
                "modalities": ["clinical", "dermoscopy"], "simulated": [],
                "attention": {"none": 0.0, "dermoscopy": 1.0, "multispectral": 0.0}, "model_version": "trust-test"}
BARE_ANSWER = {"score": 0.2, "severity": "Mild", "interval": None, "severity_probabilities": None,
               "in_distribution": None, "ood_score": None, "ood_threshold": None, "quality_warnings": None,
               "modalities": ["clinical"], "attention": None, "model_version": None}


@contextmanager
def stand_in_api(answer: dict) -> Iterator[str]:
    """An HTTP server answering /predictions with ``answer`` and /explanations with a 1-pixel map per modality."""
    pixel = base64.b64encode(png(1, 1, seed=0)).decode()
    explained = {**answer, "heatmaps": {m: {"png_base64": pixel, "peak": 0.5} for m in answer["modalities"]}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(explained if self.path.startswith("/explanations/") else answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with page_server(PageConfig(f"http://127.0.0.1:{server.server_port}", bands=BANDS)) as origin:
            yield origin
    finally:
        server.shutdown()
        server.server_close()


def answer_on_page(driver, answer: dict, files: dict[str, Path]) -> dict:
    with stand_in_api(answer) as origin:
        open_page(driver, origin, "any-key")
        submit(driver, files)
        wait_for(driver, "document.querySelector('#result').dataset.answer === 'ready'", "the answer")
        return driver.execute_script("""
            const box = sel => document.querySelector(sel).getBoundingClientRect();
            const scale = box('#scale'), interval = box('#scale-interval'), marker = box('#scale-marker');
            return {interval: document.querySelector('#scale-interval').hidden ? null :
                      [(interval.left - scale.left) / scale.width, (interval.right - scale.left) / scale.width],
                    marker: (marker.left + marker.width / 2 - scale.left) / scale.width,
                    interval_text: document.querySelector('#interval-text').textContent,
                    probabilities: Object.fromEntries([...document.querySelectorAll('#probabilities .bar')]
                                     .map(b => [b.dataset.label, b.querySelector('.bar-value').textContent])),
                    probabilities_text: document.querySelector('#probabilities').innerText,
                    warnings: [...document.querySelectorAll('#warnings li')].map(li => li.textContent),
                    version: document.querySelector('#provenance').textContent};""")


@needs_browser
def test_the_interval_band_probabilities_and_warnings_are_drawn_when_the_answer_has_them(driver, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy"), seed=4)
    shown = answer_on_page(driver, TRUST_ANSWER, files)
    assert shown["interval"] == pytest.approx([0.49, 0.67], abs=0.005)
    assert shown["marker"] == pytest.approx(0.58, abs=0.005)
    assert "90 % interval: 0.49 to 0.67" in shown["interval_text"]
    assert shown["probabilities"] == {"Mild": "4 %", "Moderate": "62 %", "Severe": "34 %"}
    warnings = " ".join(shown["warnings"])
    assert "look unlike the images the model learned from" in warnings and "4.2, limit 3.1" in warnings
    assert "The dermoscopy image looks blurred" in warnings
    assert "reaches into Moderate and Severe" in warnings
    assert "trust-test" in shown["version"]
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


@needs_browser
def test_an_answer_without_the_trust_fields_still_shows_its_score_and_says_what_is_missing(driver, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical",), seed=8)
    shown = answer_on_page(driver, BARE_ANSWER, files)
    assert shown["interval"] is None and "no interval" in shown["interval_text"]
    assert shown["marker"] == pytest.approx(0.2, abs=0.005)
    assert shown["probabilities"] == {} and "Not in this answer" in shown["probabilities_text"]
    assert shown["warnings"] == ["None reported (this server's answers carry no distribution or image-quality checks)."]
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


# -- the page server on its own -------------------------------------------------------------------------------------
def test_the_relay_passes_torchserves_refusal_through_unchanged(page, served):
    files = {"clinical_image": ("c.gif", gif(3))}
    relayed = requests.post(f"{page}/predictions/pigment", files=files, headers=served.auth(), timeout=60)
    direct = requests.post(f"{served.inference_url}/predictions/pigment", files=files, headers=served.auth(),
                           timeout=60)
    assert (relayed.status_code, relayed.json()) == (direct.status_code, direct.json()) == (415, direct.json())
    wrong_key = requests.post(f"{page}/predictions/pigment", files=files, headers={"Authorization": "Bearer x"},
                              timeout=60)
    assert wrong_key.status_code == 400 and wrong_key.json()["type"] == "InvalidKeyException"


def test_the_page_server_relays_only_the_models_two_routes_and_only_for_its_own_host_name(page):
    assert requests.post(f"{page}/models/pigment", timeout=10).status_code == 404
    assert requests.get(f"{page}/../serve_config/config.properties", timeout=10).status_code == 404
    rebound = requests.get(f"{page}/", headers={"Host": "attacker.example:3000"}, timeout=10)
    assert rebound.status_code == 421 and rebound.json()["field"] == "Host"
    index = requests.get(f"{page}/", timeout=10)
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]


def test_torchserve_refuses_a_cors_preflight_which_is_why_the_page_relays(served):
    """If a TorchServe upgrade answers the preflight, the page could call it directly (see web/server.py)."""
    preflight = requests.options(f"{served.inference_url}/predictions/pigment", timeout=10,
                                 headers={"Origin": f"http://127.0.0.1:{DEFAULT_PORT}",
                                          "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 400


def test_cors_is_limited_to_the_pages_origin():
    properties = dict(line.split("=", 1) for line in (ROOT / "serve_config" / "config.properties").read_text()
                      .splitlines() if "=" in line and not line.startswith("#"))
    assert properties["cors_allowed_origin"] == f"http://127.0.0.1:{DEFAULT_PORT}"


def test_a_non_loopback_api_is_refused_in_one_line_with_status_2():
    result = subprocess.run([sys.executable, "-m", "web.server", "serve", "--api", "http://example.com:8080"],
                            check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "expected http://127.0.0.1:PORT" in result.stderr


def test_start_prints_an_address_with_a_working_key_renewed_near_expiry_and_stop_stops(served, tmp_path):
    run_dir, cli = tmp_path / "web", [sys.executable, "-m", "web.server"]
    start = subprocess.run([*cli, "start", "--api", served.inference_url, "--port", "0", "--run-dir", str(run_dir)],
                           check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    try:
        assert start.returncode == 0, start.stderr
        url = subprocess.run([*cli, "url", "--run-dir", str(run_dir), "--torchserve-run-dir", str(served.run_dir)],
                             check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert url.returncode == 0, url.stderr
        address = url.stdout.splitlines()[0]
        origin, key = address.split("/#key=")
        assert requests.get(f"{origin}/config.json", timeout=10).json() == {"model": "pigment", "bands": None}
        assert key == served.key("inference")
        assert requests.get(f"{served.inference_url}/ping", headers={"Authorization": f"Bearer {key}"},
                            timeout=10).status_code == 200

        # Seen from an hour later the key is about to expire: the address gets a renewed key, the old one is dead.
        renewed, expires = page_url(run_dir, served.run_dir, now=datetime.now(UTC) + timedelta(hours=1))
        new_key = renewed.split("#key=")[1]
        assert new_key != key and new_key == served.key("inference") and expires > datetime.now(UTC)
        ping = {k: requests.get(f"{served.inference_url}/ping", headers={"Authorization": f"Bearer {k}"}, timeout=10)
                for k in (key, new_key)}
        assert (ping[key].status_code, ping[new_key].status_code) == (400, 200)
    finally:
        stop = subprocess.run([*cli, "stop", "--run-dir", str(run_dir)], check=False, capture_output=True, text=True,
                              cwd=ROOT,
                              timeout=60)
    assert stop.stdout.strip() == "review page stopped"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{origin}/config.json", timeout=10)


@needs_browser
def test_a_dropped_photo_is_taken_like_a_chosen_one(driver, tmp_path):
    _, files = lesion_files(tmp_path, ("clinical", "dermoscopy"), seed=2)
    with stand_in_api(TRUST_ANSWER) as origin:
        open_page(driver, origin, "any-key")
        driver.find_element("css selector", "input[name=clinical_image]").send_keys(str(files["clinical"]))
        driver.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.querySelector('#field-dermoscopy_image .drop')
              .dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
                              base64.b64encode(files["dermoscopy"].read_bytes()).decode())
        assert driver.execute_script("return document.querySelector('#field-dermoscopy_image .hint').textContent") \
            == "dropped.png"
        driver.find_element("id", "score-button").click()
        wait_for(driver, "document.querySelectorAll('img.overlay').length === 2", "both overlays")
        assert "dropped.png" in driver.execute_script("return document.querySelector('#provenance').textContent")
