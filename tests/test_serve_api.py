"""The JSON API of ``camloc serve`` through FastAPI's test client: every endpoint, every
user error (4xx JSON with a one-line message), and the server still serving afterwards."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import testclient as fastapi_testclient
from PIL import Image
from serve_helpers import shared_model

import camloc
from camloc.boxes import threshold_level
from camloc.errors import ImageError
from camloc.images import read_image
from camloc.jobs.local import RunOptions, run
from camloc.serve import create_app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
COFFEE = EXAMPLES / "coffee.jpg"


def local_client(app, **options):
    """FastAPI's test client, sending ``Host: localhost`` (one of the hosts the app answers)."""
    return fastapi_testclient.TestClient(app, base_url="http://localhost", **options)


@pytest.fixture(scope="module")
def client():
    return local_client(create_app(shared_model()))


def upload(path: Path = COFFEE, content_type: str = "image/jpeg", name: str | None = None):
    return {"file": (name or path.name, path.read_bytes(), content_type)}


def decode(data_url: str) -> Image.Image:
    header, payload = data_url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A 69-byte PNG claiming ``width x height``: a header and a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def assert_one_line_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert body["error"] and "\n" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"]


# --------------------------------------------------------------------------- endpoints


def test_health_and_model(client):
    assert client.get("/api/health").json() == {"status": "ok", "model": "efficientnet_lite0"}
    info = client.get("/api/model").json()
    assert info["name"] == "efficientnet_lite0"
    assert info["num_classes"] == 1000 and info["input_size"] == [224, 224]
    assert info["exact_cam"] is True and "cam" in info["methods"]
    assert info["limits"] == {"max_upload_bytes": 20_000_000, "max_pixels": 40_000_000,
                              "max_display_pixels": 2048 * 2048, "max_map_pixels": 20 * 1024 * 1024,
                              "max_topk": 20, "workers": 2, "max_queue": 64,
                              "max_batch": 8, "batch_wait_ms": 5.0}
    classes = client.get("/api/classes").json()
    assert len(classes) == 1000 and classes[967] == "espresso"


def test_colormap_samples_page_static_and_docs(client):
    lut = client.get("/api/colormaps/viridis").json()["lut"]
    assert lut == camloc.render.colormap_lut("viridis").tolist() and len(lut) == 256
    samples = client.get("/api/samples").json()
    assert {s["name"] for s in samples} >= {"coffee", "chelsea_cat"}
    sample = client.get(samples[0]["url"])
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).format == "JPEG"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="overlay"' in page.text and 'src="/static/app.js"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        served = client.get(asset)
        assert served.status_code == 200
        assert "http://" not in served.text and "https://" not in served.text  # no CDN
    assert "https://" not in page.text and "http://" not in page.text
    docs = client.get("/docs")  # the app's own page: no script, nothing from a CDN
    assert docs.status_code == 200 and "/api/explain" in docs.text and "/openapi.json" in docs.text
    assert "<script" not in docs.text and "cdn" not in docs.text.lower()
    assert client.get("/redoc").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/explain", "/api/health", "/api/model"} <= set(paths)


# --------------------------------------------------------------------------- explain


def test_explain_returns_the_results_jsonl_record(client, tmp_path):
    response = client.post("/api/explain", files=upload(), data={"topk": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    # The same record a folder run writes to results.jsonl (paths and outputs aside).
    run(shared_model(), [str(COFFEE)], RunOptions.build(out=tmp_path, topk=3))
    [line] = (tmp_path / "results.jsonl").read_text().splitlines()
    written = json.loads(line)
    for key in written:
        if key not in ("image", "outputs", "file"):  # file: the run's identity of its input
            assert body[key] == written[key], key
    assert body["image"] == "coffee.jpg" and body["outputs"] == {} and body["error"] is None
    assert body["predictions"][0]["label"] == "espresso"
    assert [c["label"] for c in body["cams"]] == [p["label"] for p in body["predictions"][:3]]

    # Pictures: the photo, the overlay, and one grayscale map per explained class.
    assert body["display"] == {"width": 600, "height": 400, "scale": 1.0, "scale_x": 1.0, "scale_y": 1.0}
    picture, overlay = decode(body["picture"]), decode(body["overlay"])
    assert picture.size == overlay.size == (600, 400) and overlay.mode == "RGB"
    maps = [decode(m) for m in body["maps"]]
    assert len(maps) == 3 and all(m.mode == "L" and m.size == (600, 400) for m in maps)
    [expected] = camloc.explain(shared_model(), COFFEE, topk=3)
    gray = torch.from_numpy(np.stack([np.asarray(m) for m in maps])).float() / 255
    assert (gray - expected.normalized).abs().max() <= 0.5 / 255 + 1e-6
    assert np.asarray(overlay).std() > 20  # a real picture, not a flat fill


def test_explain_classes_by_name_and_index_and_options(client):
    response = client.post("/api/explain", files=upload(),
                           data={"class": ["cup", "967"], "threshold": "0.5", "colormap": "viridis",
                                 "opacity": "0.8"})
    body = response.json()
    assert [c["label"] for c in body["cams"]] == ["cup", "espresso"]
    assert body["options"] == {"threshold": 0.5, "colormap": "viridis", "opacity": 0.8,
                               "policy": "squash", "method": "walkcam"}
    assert body["levels"] == [0.5, 0.5]
    [expected] = camloc.explain(shared_model(), COFFEE, classes=["cup", 967], threshold=0.5)
    assert [c["boxes"] for c in body["cams"]] == [[list(b) for b in bs] for bs in expected.boxes]


def test_the_default_rule_and_its_level_on_each_map(client):
    """No threshold: the server's rule (Otsu for the default walkcam), and the level it gave
    each returned map, where the page's slider starts."""
    body = client.post("/api/explain", files=upload(), data={"topk": "2"}).json()
    assert body["method"] == "walkcam" and body["options"]["threshold"] == "otsu"
    maps = [torch.from_numpy(np.array(decode(m))).float() / 255 for m in body["maps"]]
    assert len(body["levels"]) == 2
    for level, gray in zip(body["levels"], maps, strict=True):
        assert 0.0 < level < 1.0 and level == pytest.approx(threshold_level(gray, "otsu"), abs=0.01)
    [expected] = camloc.explain(shared_model(), COFFEE, topk=2)
    assert [c["boxes"] for c in body["cams"]] == [[list(b) for b in bs] for bs in expected.boxes]
    assert body["levels"] == [round(level, 2) for level in expected.levels]  # the levels the boxes were cut at


def test_explain_large_image_returns_small_pictures_and_original_boxes(client):
    response = client.post("/api/explain", files=upload(EXAMPLES / "astronaut.jpg"),
                           data={"max_side": "128"})
    body = response.json()
    assert (body["width"], body["height"]) == (512, 512)
    assert body["display"] == {"width": 128, "height": 128, "scale": 4.0, "scale_x": 4.0, "scale_y": 4.0}
    assert decode(body["maps"][0]).size == decode(body["overlay"]).size == (128, 128)
    [expected] = camloc.explain(shared_model(), EXAMPLES / "astronaut.jpg")
    assert body["cams"][0]["boxes"] == [list(b) for b in expected.boxes[0]]


def test_overlay_can_be_left_out(client):
    body = client.post("/api/explain", files=upload(), data={"overlay": "false"}).json()
    assert body["overlay"] is None and len(body["maps"]) == 1


def test_png_upload_and_octet_stream(client):
    buffer = io.BytesIO()
    Image.open(COFFEE).save(buffer, "PNG")
    response = client.post("/api/explain", files={
        "file": ("coffee.png", buffer.getvalue(), "application/octet-stream")})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "espresso"


# --------------------------------------------------------------------------- errors


def ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "ICO")
    return buffer.getvalue()


ERRORS = {
    "not an image": (dict(files={"file": ("a.jpg", b"hello, not a picture", "image/jpeg")}), 400,
                     ["a.jpg: not an image file"]),
    "empty file": (dict(files={"file": ("e.png", b"", "image/png")}), 400, ["e.png: empty file"]),
    "truncated image": (dict(files={"file": ("t.jpg", COFFEE.read_bytes()[:3000], "image/jpeg")}),
                        400, ["t.jpg: unreadable image"]),
    "unsupported media type": (dict(files=upload(name="coffee.txt", content_type="text/plain")),
                               415, ["unsupported type text/plain"]),
    "unsupported image format": (dict(files={"file": ("i.ico", ico_bytes(), "image/x-icon")}), 415,
                                 ["unsupported image type ICO"]),
    "too many pixels (header only)": (
        dict(files={"file": ("huge.png", png_header_only(50_000, 40_000), "image/png")}), 413,
        ["50000x40000 is 2000.0 megapixels", "limit of 40.0"]),
    "unknown class": (dict(files=upload(), data={"class": "zebra crossing"}), 400,
                      ["unknown class 'zebra crossing'"]),
    "class index out of range": (dict(files=upload(), data={"class": "1000"}), 400,
                                 ["class index 1000 out of range"]),
    "threshold above 1": (dict(files=upload(), data={"threshold": "1.5"}), 422, ["threshold:"]),
    "opacity not a number": (dict(files=upload(), data={"opacity": "lots"}), 422, ["opacity:"]),
    "topk 0": (dict(files=upload(), data={"topk": "0"}), 422, ["topk:"]),
    "topk too large": (dict(files=upload(), data={"topk": "500"}), 422, ["topk:"]),
    "unknown colormap": (dict(files=upload(), data={"colormap": "rainbowz"}), 400,
                         ["unknown colormap 'rainbowz'"]),
    "unknown method": (dict(files=upload(), data={"method": "magic"}), 400,
                       ["unknown method 'magic'"]),
    "unknown policy": (dict(files=upload(), data={"policy": "stretch"}), 400,
                       ["unknown policy 'stretch'"]),
    "no file": (dict(data={"topk": "1"}), 422, ["file: Field required"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_each_error_is_a_one_line_4xx_and_the_server_keeps_serving(client, case):
    request, status, fragments = ERRORS[case]
    assert_one_line_error(client.post("/api/explain", **request), status, *fragments)
    assert client.get("/api/health").status_code == 200


def test_unknown_routes_and_colormaps_are_json_errors(client):
    assert_one_line_error(client.get("/api/nothing"), 404, "Not Found")
    assert_one_line_error(client.get("/api/colormaps/nope"), 400, "unknown colormap 'nope'")
    assert_one_line_error(client.get("/api/explain"), 405)


def test_an_internal_error_is_one_line_of_json_too(monkeypatch):
    import camloc.serve.app

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated failure\nsecond line")

    monkeypatch.setattr(camloc.serve.app, "explain_response", broken)
    app = create_app(shared_model())
    client = local_client(app, raise_server_exceptions=False)
    assert_one_line_error(client.post("/api/explain", files=upload()), 500,
                          "internal error: RuntimeError: simulated failure")
    assert client.get("/api/health").status_code == 200


def test_upload_limit_with_and_without_content_length():
    client = local_client(create_app(shared_model(), max_upload=50_000))
    photo = COFFEE.read_bytes()  # 72 kB
    assert_one_line_error(client.post("/api/explain", files=upload()), 413,
                          "upload too large", "the limit is 0.05 MB")

    boundary = "camloc-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.jpg\""
            "\r\nContent-Type: image/jpeg\r\n\r\n")
    body = head.encode() + photo + f"\r\n--{boundary}--\r\n".encode()

    def chunks():  # no Content-Length: counted as it streams in
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    response = client.post("/api/explain", content=chunks(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_one_line_error(response, 413, "upload too large", "the limit is 0.05 MB")
    small = io.BytesIO()
    Image.open(COFFEE).resize((120, 80)).save(small, "JPEG")
    ok = client.post("/api/explain", files={"file": ("small.jpg", small.getvalue(), "image/jpeg")})
    assert ok.status_code == 200 and ok.json()["width"] == 120


def test_pixel_limit_of_a_real_image():
    client = local_client(create_app(shared_model(), max_pixels=200_000))
    assert_one_line_error(client.post("/api/explain", files=upload()), 413,
                          "coffee.jpg: 600x400 is 0.2 megapixels, over the limit of 0.2")


# --------------------------------------------------------------------------- images.read_image


def test_read_image_from_bytes_matches_load_image():
    from_bytes = read_image(io.BytesIO(COFFEE.read_bytes()), "coffee")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(camloc.load_image(COFFEE)))
    with pytest.raises(ImageError, match="huge: 50000x40000 is 2000 megapixels"):
        read_image(io.BytesIO(png_header_only(50_000, 40_000)), "huge")
    with pytest.raises(ImageError, match="junk: not an image file"):
        read_image(io.BytesIO(b"junk" * 10), "junk")
