"""``camloc serve`` bounded and hardened: what one request may cost (maps at display size,
boxes at original resolution without the full-size stack), the queue, the Host check, the
security headers on every answer, the display scale of extreme aspect ratios."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi import testclient as fastapi_testclient
from PIL import Image
from serve_helpers import shared_model

import camloc
from camloc.serve import MAX_DISPLAY_PIXELS, MAX_TOPK, create_app, display_size
from camloc.serve.app import SECURITY_HEADERS, Admission, ApiError, default_allowed_hosts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def local_client(app, base_url: str = "http://localhost", **options):
    return fastapi_testclient.TestClient(app, base_url=base_url, **options)


@pytest.fixture(scope="module")
def client():
    return local_client(create_app(shared_model()))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def picture_size(data_url: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


def peak_rss_reset() -> bool:
    """Reset this process's peak resident size (Linux: ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# --------------------------------------------------------------------------- what a request costs


def test_a_tiny_png_of_huge_dimensions_with_20_classes_stays_small(client):
    """120 KB, 6000x6000, topk=20: the maps come at display size and the process's peak grows
    by a fraction of what 20 full-size maps (2.9 GB of float32) would take."""
    data = png(Image.new("RGB", (6000, 6000), (120, 90, 60)))
    assert len(data) < 200_000
    measured = peak_rss_reset()
    before = status_mb("VmRSS")
    for max_side in ("1024", "0"):
        response = client.post("/api/explain", files={"file": ("big.png", data, "image/png")},
                               data={"topk": "20", "max_side": max_side, "overlay": "false"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["maps"]) == 20 and (body["width"], body["height"]) == (6000, 6000)
        width, height = body["display"]["width"], body["display"]["height"]
        assert width * height * 20 <= 20 * 1024 * 1024 and width * height <= MAX_DISPLAY_PIXELS
        assert {picture_size(m) for m in body["maps"]} == {(width, height)}
    if measured:
        grown = status_mb("VmHWM") - before
        assert grown < 1000, f"peak resident size grew by {grown:.0f} MB"  # was +4,100 MB


def test_max_side_0_is_bounded_too(client):
    data = png(Image.new("RGB", (3000, 2000), (10, 200, 30)))
    body = client.post("/api/explain", files={"file": ("wide.png", data, "image/png")},
                       data={"max_side": "0"}).json()
    assert (body["display"]["width"], body["display"]["height"]) == display_size(3000, 2000, 0)
    assert body["display"]["width"] * body["display"]["height"] <= MAX_DISPLAY_PIXELS
    small = client.post("/api/explain", files={"file": ("s.png", png(Image.new("RGB", (300, 200))), "image/png")},
                        data={"max_side": "0"}).json()
    assert small["display"] == {"width": 300, "height": 200, "scale": 1.0, "scale_x": 1.0, "scale_y": 1.0}


@pytest.mark.parametrize("threshold", ["0.25", "otsu", "otsu2", "mean"])
def test_boxes_of_a_large_image_match_the_library_at_full_resolution(client, threshold):
    """The server finds boxes a band of rows at a time; the library holds the full-size maps."""
    photo = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((2400, 1800))
    body = client.post("/api/explain", files={"file": ("a.png", png(photo), "image/png")},
                       data={"topk": "3", "threshold": threshold, "policy": "center-crop"}).json()
    [expected] = camloc.explain(shared_model(), photo, topk=3, threshold=threshold, policy="center-crop")
    got = [c["boxes"] for c in body["cams"]]
    want = [[list(b) for b in boxes] for boxes in expected.boxes]
    assert [len(b) for b in got] == [len(b) for b in want]
    for boxes, reference in zip(got, want, strict=True):
        assert np.abs(np.array(boxes) - np.array(reference)).max(initial=0) <= 1


def test_the_display_maps_match_the_full_size_maps_resized(client):
    photo = Image.open(EXAMPLES / "coffee.jpg").convert("RGB")
    body = client.post("/api/explain", files={"file": ("c.png", png(photo), "image/png")},
                       data={"max_side": "300"}).json()
    [expected] = camloc.explain(shared_model(), photo)
    gray = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["maps"][0].split(",", 1)[1]))), float) / 255
    reference = np.asarray(Image.fromarray(expected.normalized[0].numpy()).resize((300, 200), Image.BILINEAR))
    assert gray.shape == (200, 300) and np.abs(gray - reference).mean() < 0.01


def test_display_scale_of_extreme_aspect_ratios(client):
    data = png(Image.new("RGB", (1, 20000), (200, 10, 10)))
    body = client.post("/api/explain", files={"file": ("line.png", data, "image/png")}).json()
    display = body["display"]
    assert (display["width"], display["height"]) == (1, 1024)
    assert display["scale"] == pytest.approx(20000 / 1024) == display["scale_y"]
    assert display["scale_x"] == 1.0
    assert display_size(20000, 1, 1024) == (1024, 1) and display_size(1, 1, 0) == (1, 1)


def test_class_fields_are_capped(client):
    photo = (EXAMPLES / "coffee.jpg").read_bytes()
    response = client.post("/api/explain", files={"file": ("c.jpg", photo, "image/jpeg")},
                           data={"class": [str(i % 1000) for i in range(1000)]})
    assert response.status_code == 422
    assert response.json() == {"error": f"class: at most {MAX_TOPK} classes a request, got 1000"}


# --------------------------------------------------------------------------- the queue


def test_requests_beyond_the_queue_get_503_with_retry_after():
    async def scenario():
        admission = Admission(workers=1, max_queue=1)
        gate = asyncio.Event()

        async def hold():
            async with admission.turn():
                await gate.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        second = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert (admission.active, admission.waiting) == (1, 1)
        with pytest.raises(ApiError) as refused:
            async with admission.turn():
                pass
        gate.set()
        await asyncio.gather(first, second)
        assert (admission.active, admission.waiting) == (0, 0)
        async with admission.turn():  # room again
            pass
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and "server busy" in refused.detail
    assert int(refused.headers["Retry-After"]) >= 1


def test_memory_goes_back_once_the_server_has_paused_not_between_requests(monkeypatch):
    """A steady stream of requests never pays for giving memory back; a pause of
    ``release_after`` seconds does, once; a request that fails (no answer sent) counts too."""
    released: list[int] = []
    monkeypatch.setattr("camloc.serve.app.release_memory", lambda: released.append(1) or True)

    async def request(admission: Admission, fail: bool = False) -> None:
        try:
            async with admission.turn():
                await asyncio.sleep(0.01)
                if fail:
                    raise ApiError(400, "bad file")
        except ApiError:
            return
        await admission.release_if_idle()  # the background task after the answer

    async def scenario() -> tuple[int, int, int]:
        admission = Admission(workers=1, max_queue=8, release_after=0.2)
        for _ in range(10):  # one after the other, 0.05 s apart: never idle for 0.2 s
            await request(admission)
            await asyncio.sleep(0.05)
        during = admission.releases
        await asyncio.sleep(0.4)
        after_pause = admission.releases
        await request(admission, fail=True)
        await asyncio.sleep(0.4)
        return during, after_pause, admission.releases

    during, after_pause, after_failure = asyncio.run(scenario())
    assert (during, after_pause, after_failure) == (0, 1, 2)
    assert len(released) == 2


def test_the_queue_bound_is_reported():
    client = local_client(create_app(shared_model(), max_queue=3))
    assert client.get("/api/model").json()["limits"]["max_queue"] == 3


# --------------------------------------------------------------------------- Host header, headers


def test_only_allowed_hosts_are_answered():
    app = create_app(shared_model())
    for host in ("localhost", "127.0.0.1", "[::1]"):
        assert local_client(app, f"http://{host}:8000").get("/api/health").status_code == 200, host
    evil = local_client(app, "http://attacker.example").get("/api/health")
    assert evil.status_code == 400
    custom = create_app(shared_model(), allowed_hosts=["camloc.example.org"])
    assert local_client(custom, "https://camloc.example.org").get("/api/health").status_code == 200
    assert local_client(custom, "http://localhost").get("/api/health").status_code == 400
    assert default_allowed_hosts("192.168.1.20")[-1] == "192.168.1.20"
    assert default_allowed_hosts("::")[-1] == "[::1]"  # a wildcard bind adds nothing
    assert default_allowed_hosts("fe80::1")[-2:] == ["fe80::1", "[fe80::1]"]


def test_security_headers_on_every_answer(monkeypatch):
    import camloc.serve.app

    app = create_app(shared_model(), max_upload=1000)
    client = local_client(app, raise_server_exceptions=False)
    answers = {
        "page": client.get("/"),
        "script": client.get("/static/app.js"),
        "api": client.get("/api/health"),
        "docs": client.get("/docs"),
        "not found": client.get("/nothing"),
        "too large": client.post("/api/explain", files={"file": ("x.jpg", b"x" * 5000, "image/jpeg")}),
        "bad host": local_client(app, "http://attacker.example").get("/"),
    }

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated")

    monkeypatch.setattr(camloc.serve.app, "decode_upload", broken)
    answers["internal error"] = client.post("/api/explain", files={"file": ("x.jpg", b"x", "image/jpeg")})
    assert answers["internal error"].status_code == 500
    for what, response in answers.items():
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (what, name)
    csp = SECURITY_HEADERS["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data: blob:" in csp
    assert "unsafe-inline" not in csp and "http" not in csp


def test_503_with_retry_after_over_http(monkeypatch):
    """One worker, no batching, no queue: a second explain request while the first is at work
    is refused at once with 503, ``Retry-After`` and the security headers; health still answers
    (with batching: tests/test_serve_batching.py)."""
    import threading
    import time

    import httpx
    from serve_helpers import live_server

    import camloc.serve.app

    decode = camloc.serve.app.decode_upload
    started = threading.Event()

    def slow_decode(*args):
        started.set()
        time.sleep(1.5)
        return decode(*args)

    monkeypatch.setattr(camloc.serve.app, "decode_upload", slow_decode)
    app = create_app(camloc.load_model("resnet18", weights="random", device="cpu"), workers=1, max_queue=0,
                     max_batch=1)
    photo = {"file": ("c.jpg", (EXAMPLES / "coffee.jpg").read_bytes(), "image/jpeg")}
    with live_server(app) as url:
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(httpx.post(f"{url}/api/explain", files=photo,
                                                                          timeout=60)))
        worker.start()
        assert started.wait(30)
        refused = httpx.post(f"{url}/api/explain", files=photo, timeout=60)
        assert httpx.get(f"{url}/api/health", timeout=1).status_code == 200
        worker.join(60)
    assert first[0].status_code == 200
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"].startswith("server busy: ")
    assert refused.headers["x-content-type-options"] == "nosniff"
