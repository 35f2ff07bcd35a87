"""Micro-batching in ``camloc serve``: concurrent requests share forward passes, and each
answer is the one the request gets alone (its own classes, threshold, policy, method), a bad
request in a burst stays alone with its error, the queue bound still answers 503, and the
batcher's thread ends with the server."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import testclient as fastapi_testclient
from PIL import Image
from serve_helpers import live_server, shared_model

import camloc
import camloc.serve.app
from camloc.methods import ClassSelection
from camloc.pipeline import ExplainConfig, Pipeline
from camloc.serve import create_app
from camloc.serve.batching import BatcherClosed, MicroBatcher, RowSelection, forward_key

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
PHOTOS = sorted(EXAMPLES.glob("*.jpg"))


def local_client(app: Any) -> fastapi_testclient.TestClient:
    return fastapi_testclient.TestClient(app, base_url="http://localhost")


@pytest.fixture(scope="module")
def alone() -> fastapi_testclient.TestClient:
    """Today's server: each request's forward pass alone."""
    return local_client(create_app(shared_model(), max_batch=1))


@pytest.fixture(scope="module")
def small_model() -> camloc.ClassifierAdapter:
    return camloc.load_model("resnet18", weights="random", device="cpu")


def form_upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def post(url: str, path: Path, form: dict[str, Any] | None = None, data: bytes | None = None) -> httpx.Response:
    files = {"file": (path.name, data if data is not None else path.read_bytes(), "image/jpeg")}
    return httpx.post(f"{url}/api/explain", data=form or {}, files=files, timeout=300)


def burst(url: str, requests: list[tuple[Path, dict[str, Any], bytes | None]]) -> list[httpx.Response]:
    """All ``requests`` at once, each from its own thread."""
    start = threading.Barrier(len(requests))

    def send(request: tuple[Path, dict[str, Any], bytes | None]) -> httpx.Response:
        start.wait()
        return post(url, *request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def map_pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))), dtype=np.int16)


def assert_same_answer(batched: dict[str, Any], single: dict[str, Any]) -> None:
    """The same record: classes, labels, boxes exactly; scores to 1e-5; maps to one grey level."""
    for key in ("image", "width", "height", "method", "display", "options"):
        assert batched[key] == single[key], key
    for part in ("predictions", "cams"):
        assert len(batched[part]) == len(single[part]), part
        for got, want in zip(batched[part], single[part], strict=True):
            assert (got["index"], got["label"]) == (want["index"], want["label"]), part
            assert got["score"] == pytest.approx(want["score"], abs=1e-5), part
            assert got.get("boxes") == want.get("boxes"), part
    assert len(batched["maps"]) == len(single["maps"])
    for got, want in zip(batched["maps"], single["maps"], strict=True):
        assert np.abs(map_pixels(got) - map_pixels(want)).max() <= 1


# --------------------------------------------------------------------------- over HTTP


def test_a_burst_shares_forward_passes_and_each_answer_is_the_one_alone(alone):
    app = create_app(shared_model(), max_batch=8, batch_wait_ms=200)
    requests = [(PHOTOS[i % len(PHOTOS)], {"topk": "3"}, None) for i in range(8)]
    with live_server(app) as url:
        before = httpx.get(f"{url}/api/stats").json()
        answers = burst(url, requests)
        after = httpx.get(f"{url}/api/stats").json()
    assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
    passes, images = after["forward_passes"] - before["forward_passes"], after["images"] - before["images"]
    assert images == 8
    assert passes < 8 and after["largest_batch"] >= 2, after  # batched, not one pass per request
    for (path, form, _), answer in zip(requests, answers, strict=True):
        single = alone.post("/api/explain", data=form, files=form_upload(path))
        assert_same_answer(answer.json(), single.json())


def test_mixed_options_in_one_burst_get_their_own(alone):
    app = create_app(shared_model(), max_batch=8, batch_wait_ms=200)
    cat, coffee = EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "coffee.jpg"
    forms: list[dict[str, Any]] = [
        {"topk": "1"},
        {"topk": "5", "threshold": "0.5"},
        {"class": ["tabby", "967"]},
        {"topk": "2", "threshold": "otsu", "policy": "center-crop"},
        {"policy": "pad", "max_side": "200"},
        {"method": "gradcam", "topk": "2"},  # another forward pass: its own batch
        {"class": ["espresso"], "threshold": "mean"},
        {"topk": "4", "overlay": "false"},
    ]
    requests = [(cat if i % 2 else coffee, form, None) for i, form in enumerate(forms)]
    with live_server(app) as url:
        answers = burst(url, requests)
        stats = httpx.get(f"{url}/api/stats").json()
    assert [a.status_code for a in answers] == [200] * len(forms), [a.text[:200] for a in answers]
    assert stats["images"] == len(forms) and stats["forward_passes"] < len(forms)
    for (path, form, _), answer in zip(requests, answers, strict=True):
        single = alone.post("/api/explain", data=form, files=form_upload(path))
        assert single.status_code == 200
        assert_same_answer(answer.json(), single.json())
    body = {i: a.json() for i, a in enumerate(answers)}
    assert [len(body[i]["cams"]) for i in range(len(forms))] == [1, 5, 2, 2, 1, 2, 1, 4]
    assert [c["label"] for c in body[2]["cams"]] == ["tabby", "espresso"]
    assert body[5]["method"] == "gradcam" and body[0]["method"] == "walkcam"
    assert body[1]["options"]["threshold"] == 0.5 and body[3]["options"]["threshold"] == "otsu"
    assert body[3]["options"]["policy"] == "center-crop" and body[4]["options"]["policy"] == "pad"
    assert body[7]["overlay"] is None and body[0]["overlay"] is not None


def test_a_bad_request_in_a_burst_does_not_affect_the_others(alone):
    app = create_app(shared_model(), max_batch=8, batch_wait_ms=200)
    photo = PHOTOS[0]
    good = [(PHOTOS[i % len(PHOTOS)], {"topk": "2"}, None) for i in range(5)]
    bad = [
        (photo, {}, b"definitely not an image" * 20),  # 400 at decoding
        (photo, {}, photo.read_bytes()[:2000]),  # truncated JPEG: 400
        (photo, {"class": ["no such class"]}, None),  # 400 for its options
    ]
    requests = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], good[4]]
    with live_server(app) as url:
        answers = burst(url, requests)
        assert httpx.get(f"{url}/api/health").status_code == 200
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 400, 200, 400, 200, 400, 200, 200], [a.text[:200] for a in answers]
    assert "no such class" in answers[5].json()["error"]
    for request, answer in zip(requests, answers, strict=True):
        if answer.status_code == 200:
            single = alone.post("/api/explain", data=request[1], files=form_upload(request[0]))
            assert_same_answer(answer.json(), single.json())


def test_requests_beyond_the_queue_get_503_when_batching(monkeypatch, small_model):
    """One worker, batches of 2: 1 + 2 * 2 = 5 requests at work, no queue; the 6th is refused
    at once with 503 and Retry-After; once the first is let through all five are answered."""
    decode = camloc.serve.app.decode_upload
    gate, entered = threading.Event(), threading.Event()

    def held_decode(*args: Any) -> Image.Image:
        entered.set()
        assert gate.wait(60)
        return decode(*args)

    monkeypatch.setattr(camloc.serve.app, "decode_upload", held_decode)
    app = create_app(small_model, workers=1, max_queue=0, max_batch=2)
    photo = PHOTOS[0]
    with live_server(app) as url:
        assert httpx.get(f"{url}/api/stats").json()["at_work"] == 5
        with ThreadPoolExecutor(5) as pool:
            held = [pool.submit(post, url, photo) for _ in range(5)]
            assert entered.wait(30)
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/api/stats").json()["active"] < 5:
                assert time.monotonic() < deadline, "the five requests were not all admitted"
                time.sleep(0.05)
            refused = post(url, photo)
            gate.set()
            answers = [future.result() for future in held]
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"].startswith("server busy: ")
    assert [a.status_code for a in answers] == [200] * 5


def test_max_batch_1_is_one_forward_pass_per_request(small_model):
    client = local_client(create_app(small_model, max_batch=1))
    for photo in PHOTOS[:3]:
        assert client.post("/api/explain", files=form_upload(photo)).status_code == 200
    stats = client.get("/api/stats").json()
    assert (stats["forward_passes"], stats["images"], stats["largest_batch"]) == (3, 3, 1)
    assert client.get("/api/model").json()["limits"]["max_batch"] == 1


def test_a_request_in_the_model_at_shutdown_is_answered_and_nothing_is_left_running(small_model):
    app = create_app(small_model, max_batch=4)
    batcher = app.state.explainer.batcher
    held = GatedForward()
    batcher.forward = held
    pool = ThreadPoolExecutor(1)
    with live_server(app) as url:
        answer = pool.submit(post, url, PHOTOS[0])
        assert held.started.wait(60)
        assert batcher.running
        threading.Timer(1.0, held.gate.set).start()
    # uvicorn stopped accepting, waited for the request in the model, then closed the batcher
    assert answer.result(60).status_code == 200
    assert not batcher.running and batcher.waiting == 0
    assert not [t for t in threading.enumerate() if "batch" in t.name]  # the batcher owns no thread
    pool.shutdown()


# --------------------------------------------------------------------------- the batcher itself


class GatedForward:
    """A pipeline's forward that holds its first call until ``gate`` is set, recording batch
    sizes; a batch holding an all-NaN image raises (a request that breaks its batch)."""

    def __init__(self) -> None:
        self.gate, self.started = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def __call__(self, pipeline: Pipeline, batch: torch.Tensor, selection: Any) -> Any:
        self.sizes.append(batch.shape[0])
        if len(self.sizes) == 1:
            self.started.set()
            assert self.gate.wait(60)
        if torch.isnan(batch).flatten(1).all(dim=1).any():
            raise ValueError("a poisoned image")
        return pipeline.forward(batch, selection)

    async def running(self) -> None:
        """Until the first (held) batch is in the model."""
        for _ in range(600):
            if self.started.is_set():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the first batch never started")


def tensors(model: camloc.ClassifierAdapter, count: int) -> list[torch.Tensor]:
    pipeline = Pipeline(model)
    return [pipeline.preprocess(camloc.pipeline.as_pil(PHOTOS[i % len(PHOTOS)]))[0] for i in range(count)]


def test_requests_queued_while_the_model_is_busy_form_one_batch_with_their_own_classes(small_model):
    forward = GatedForward()
    batcher = MicroBatcher(forward, max_batch=8, wait=0)
    selections = [ExplainConfig(topk=1), ExplainConfig(topk=3), ExplainConfig(classes=("tabby", "7")),
                  ExplainConfig(topk=2, threshold=0.6, policy="pad"), ExplainConfig(classes=("espresso",))]
    pipelines = [Pipeline(small_model, config) for config in selections]
    images = tensors(small_model, len(pipelines) + 1)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.run(pipelines[0], images[-1]))
        await forward.running()
        queued = [asyncio.ensure_future(batcher.run(p, image)) for p, image in zip(pipelines, images, strict=False)]
        await asyncio.sleep(0.1)
        assert batcher.waiting == len(pipelines)
        forward.gate.set()
        await first
        return list(await asyncio.gather(*queued))

    outputs = asyncio.run(scenario())
    assert forward.sizes == [1, len(pipelines)]  # the five different selections in one pass
    assert batcher.stats.to_dict()["largest_batch"] == len(pipelines)
    for pipeline, image, output in zip(pipelines, images[: len(pipelines)], outputs, strict=True):
        single = pipeline.forward(image[None])
        assert output.classes.tolist() == single.classes.tolist()
        assert output.maps.shape == single.maps.shape
        torch.testing.assert_close(output.logits, single.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(output.maps, single.maps, atol=1e-4, rtol=1e-4)
    assert outputs[2].classes.tolist() == [[small_model.class_index("tabby"), 7]]


def test_a_failing_batch_is_run_again_one_request_at_a_time(small_model):
    forward = GatedForward()
    batcher = MicroBatcher(forward, max_batch=8, wait=0)
    pipeline = Pipeline(small_model, ExplainConfig(topk=2))
    images = tensors(small_model, 4)
    poisoned = torch.full_like(images[0], float("nan"))

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.run(pipeline, images[0]))
        await forward.running()
        queued = [asyncio.ensure_future(batcher.run(pipeline, image))
                  for image in (images[1], poisoned, images[2], images[3])]
        await asyncio.sleep(0.1)
        forward.gate.set()
        await first
        return list(await asyncio.gather(*queued, return_exceptions=True))

    outputs = asyncio.run(scenario())
    assert isinstance(outputs[1], ValueError) and "poisoned" in str(outputs[1])
    assert forward.sizes == [1, 4, 1, 1, 1, 1]  # the batch of 4 failed: each alone
    for image, output in zip(images[1:], (outputs[0], outputs[2], outputs[3]), strict=True):
        assert output.classes.tolist() == pipeline.forward(image[None]).classes.tolist()
    assert batcher.stats.forward_passes == 4  # the failed pass is not counted


def test_a_cancelled_request_is_left_out_and_close_fails_the_queued_ones(small_model):
    pipeline = Pipeline(small_model)
    images = tensors(small_model, 3)

    async def cancelled() -> list[int]:
        forward = GatedForward()
        batcher = MicroBatcher(forward, max_batch=8, wait=0)
        first = asyncio.ensure_future(batcher.run(pipeline, images[0]))
        await forward.running()
        gone = asyncio.ensure_future(batcher.run(pipeline, images[1]))
        kept = asyncio.ensure_future(batcher.run(pipeline, images[2]))
        await asyncio.sleep(0.1)
        gone.cancel()  # the client went away
        forward.gate.set()
        assert (await kept).classes.shape == (1, 1) and await first is not None
        return forward.sizes

    assert asyncio.run(cancelled()) == [1, 1]  # the cancelled request never reached the model

    async def closed() -> None:
        forward = GatedForward()
        batcher = MicroBatcher(forward, max_batch=8, wait=0)
        running = asyncio.ensure_future(batcher.run(pipeline, images[0]))
        await forward.running()
        queued = asyncio.ensure_future(batcher.run(pipeline, images[1]))
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(batcher.close())
        with pytest.raises(BatcherClosed):
            await queued
        assert not closing.done()  # waits for the batch in the model
        forward.gate.set()
        await closing
        assert not batcher.running
        assert await running is not None  # the batch already running finished
        assert await batcher.run(pipeline, images[2]) is not None  # and it serves again after

    asyncio.run(closed())


def test_a_batch_waits_only_for_announced_requests(small_model):
    forward = GatedForward()
    forward.gate.set()
    batcher = MicroBatcher(forward, max_batch=8, wait=30.0)
    pipeline = Pipeline(small_model)
    images = tensors(small_model, 4)

    async def scenario() -> None:
        started = time.monotonic()
        await batcher.run(pipeline, images[0])  # alone: no wait, although wait is 30 s
        assert time.monotonic() - started < 15
        with batcher.announce() as coming, batcher.announce() as later, batcher.announce():
            first = asyncio.ensure_future(coming.run(pipeline, images[1]))
            await asyncio.sleep(0.3)
            assert not first.done()  # waiting for the other announced requests
            second = asyncio.ensure_future(later.run(pipeline, images[2]))
            await asyncio.sleep(0.3)
            assert not first.done() and not second.done()
        # the third one withdrew (a bad file): the batch goes without it
        assert (await first).classes.shape == (await second).classes.shape == (1, 1)
        assert not batcher.running  # nobody waits: the batcher's task has ended

    asyncio.run(scenario())
    assert forward.sizes == [1, 2]


def test_a_batch_takes_a_workers_slot_and_whoever_came_meanwhile(small_model):
    forward = GatedForward()
    forward.gate.set()
    pipeline = Pipeline(small_model)
    images = tensors(small_model, 2)

    async def scenario() -> None:
        slots = asyncio.Semaphore(1)  # one worker, busy decoding
        batcher = MicroBatcher(forward, max_batch=8, wait=0, slot=lambda: slots)
        await slots.acquire()
        first = asyncio.ensure_future(batcher.run(pipeline, images[0]))
        await asyncio.sleep(0.3)
        assert not forward.sizes and not first.done()  # the batch waits for the slot
        second = asyncio.ensure_future(batcher.run(pipeline, images[1]))
        await asyncio.sleep(0.05)
        slots.release()
        await asyncio.gather(first, second)
        assert not slots.locked()

    asyncio.run(scenario())
    assert forward.sizes == [2]  # the request that came while the slot was busy joined


def test_forward_key_and_row_selection(small_model):
    cam = Pipeline(small_model, ExplainConfig(topk=1))
    assert forward_key(cam) == forward_key(Pipeline(small_model, ExplainConfig(topk=5, policy="pad",
                                                                               threshold=0.7)))
    assert forward_key(cam) == forward_key(Pipeline(small_model, ExplainConfig(method="walkcam")))  # auto is walkcam
    for other in (ExplainConfig(method="gradcam"), ExplainConfig(method="cam"), ExplainConfig(flip=True),
                  ExplainConfig(input_size=160)):
        assert forward_key(cam) != forward_key(Pipeline(small_model, other))
    scaled = ExplainConfig(scales=(1.0, 2.0))
    assert forward_key(Pipeline(small_model, scaled)) != forward_key(Pipeline(small_model, scaled.replace(topk=2)))
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 0.0]])
    selection = RowSelection([ClassSelection(topk=1), ClassSelection(classes=(2, 0, 3))])
    assert selection.indices(logits, small_model).tolist() == [[1, 1, 1], [2, 0, 3]]
    assert selection.resolve(small_model) is None
