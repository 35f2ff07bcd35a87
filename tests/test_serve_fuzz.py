"""Schemathesis against a live ``camloc serve`` (uvicorn on 127.0.0.1, a random-weights
ResNet-18 so each call is fast): requests generated from the app's own OpenAPI schema,
valid and invalid (Schemathesis' positive and negative modes), must never get a 5xx, and
every answer must match the schema (status codes, content types, bodies, headers).
Bounded: 30 examples per operation and mode, under a minute or two on 2 cores.

Schemathesis' pytest loader (``from_fixture``) does not run under this pytest, so the
operations are driven with Hypothesis directly: each operation's strategy, one ``@given``."""

from __future__ import annotations

import pytest
import schemathesis
import uvicorn  # noqa: F401 - the test install has it; a missing one fails, never skips
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from serve_helpers import live_server  # noqa: E402

import camloc  # noqa: E402
from camloc.serve import create_app  # noqa: E402

EXAMPLES = 30


@pytest.fixture(scope="module")
def live_url():
    app = create_app(camloc.load_model("resnet18", weights="random", device="cpu"))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(live_url):
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


def operations(schema):
    found = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in found} >= {"/api/explain", "/api/health", "/api/model", "/api/colormaps/{name}"}
    return found


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_never_fails_and_matches_its_schema(api_schema, mode):
    for operation in operations(api_schema):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case):
            # Data valid for the schema may still be a bad request (random bytes are no image,
            # a random string no class name): a documented 4xx is right there. Everything
            # else Schemathesis checks applies: no 5xx, documented statuses, bodies, headers.
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=60)
            assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:200])

        try:
            call()
        except Unsatisfiable:  # nothing to make invalid (no parameter, or any string is valid)
            assert mode is GenerationMode.NEGATIVE, operation.label


def small_images():
    import io

    from hypothesis import strategies as st
    from PIL import Image

    def encode(size, mode, kind):
        buffer = io.BytesIO()
        Image.new(mode, size, 128).save(buffer, kind)
        return buffer.getvalue()

    sizes = st.tuples(st.integers(1, 400), st.integers(1, 400)) | st.sampled_from([(1, 3000), (3000, 1), (2, 2)])
    return st.builds(encode, sizes, st.sampled_from(["RGB", "L", "RGBA", "P"]), st.sampled_from(["PNG", "GIF", "BMP"]))


def test_explain_with_real_images_and_any_options(live_url):
    """Schemathesis' uploads are random bytes (400); here real images of odd sizes and modes
    meet every form field at its edges: 200, or a one-line 4xx, never a 5xx."""
    import httpx
    from hypothesis import strategies as st

    fields = st.fixed_dictionaries({}, optional={
        "topk": st.integers(-1, 25).map(str),
        "class": st.lists(st.sampled_from(["tabby", "0", "999", "1000", "-1", "zebra crossing", " ", "espresso"]),
                          max_size=4),
        "method": st.sampled_from(["auto", "cam", "gradcam", "gradcam++", "layercam", "magic"]),
        "policy": st.sampled_from(["squash", "center-crop", "pad", "stretch"]),
        "threshold": st.one_of(st.floats(-0.5, 1.5).map(str), st.sampled_from(["otsu", "otsu2", "mean", "nan", "x"])),
        "colormap": st.sampled_from(["jet", "viridis", "gray", "nope"]),
        "opacity": st.floats(-0.5, 1.5).map(str),
        "max_side": st.sampled_from(["0", "1", "7", "1024", "8192", "9000", "-3"]),
        "overlay": st.sampled_from(["true", "false", "maybe"]),
    })

    @given(image=small_images(), data=fields)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(image, data):
        response = httpx.post(f"{live_url}/api/explain", files={"file": ("x.img", image, "image/png")},
                              data=data, timeout=60)
        assert response.status_code in (200, 400, 415, 422), (response.status_code, response.text[:300])
        body = response.json()
        if response.status_code != 200:
            assert set(body) == {"error"} and "\n" not in body["error"]
            return
        assert len(body["maps"]) == len(body["cams"]) >= 1
        display = body["display"]
        assert 1 <= display["width"] <= body["width"] and 1 <= display["height"] <= body["height"]

    call()
