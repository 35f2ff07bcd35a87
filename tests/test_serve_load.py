"""``camloc serve`` as a user starts it (the CLI, in a subprocess on 127.0.0.1), under a short
concurrent load from ``benchmarks/load_serve.py``: no errors, no mixed-up answers, and the
health endpoint stays fast while explain requests queue for the model."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path

import httpx
import uvicorn  # noqa: F401 - the test install has it; a missing one fails, never skips

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    path = ROOT / "benchmarks" / "load_serve.py"
    spec = importlib.util.spec_from_file_location("load_serve", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_serve"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cli_serve_under_concurrent_load():
    bench = load_benchmark()
    images = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    # Random ResNet-18 weights start fast; what matters is the server, not the accuracy.
    server_args = ["--model", "resnet18", "--weights", "random", "--device", "cpu"]
    with bench.camloc_server(server_args) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/api/model").json()["name"] == "resnet18"
        report = asyncio.run(bench.run_load(url, images, requests=12, concurrency=4))
    assert report.errors == []  # includes answers whose top label differs from a serial run
    assert len(report.latencies) == 12
    assert report.health_latencies
    # Health answers while explains wait for the model: not serialised behind them.
    assert statistics.median(report.health_latencies) < statistics.median(report.latencies)
    assert any("p95" in line for line in report.lines())
