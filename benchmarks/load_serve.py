"""Load test of ``camloc serve``: N explain requests at concurrency C against 127.0.0.1.

Reports p50/p95 latency, throughput and the error count (which must be 0), and, while the
load runs, the latency of ``GET /api/health`` (the event loop must stay responsive). A
response whose top label differs from the same image's label in a serial warm-up counts as
an error too (it would mean concurrent requests got mixed up).

    python benchmarks/load_serve.py                      # starts `camloc serve` itself
    python benchmarks/load_serve.py --requests 200 --concurrency 8
    python benchmarks/load_serve.py --url http://127.0.0.1:8000   # an already running server

Exit status 1 when any request failed. Stops by itself: a fixed number of requests, each
with a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: list[str] = field(default_factory=list)
    health_latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def error_count(self) -> int:
        return len(self.errors)

    def percentile(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]

    def lines(self) -> list[str]:
        ms = 1000.0
        lat, health = self.latencies, self.health_latencies
        return [
            f"requests {self.requests}, concurrency {self.concurrency}, "
            f"wall {self.seconds:.1f} s, throughput {len(lat) / max(self.seconds, 1e-9):.2f} req/s",
            f"explain latency  p50 {self.percentile(lat, 50) * ms:.0f} ms  "
            f"p95 {self.percentile(lat, 95) * ms:.0f} ms  max {max(lat, default=0) * ms:.0f} ms",
            f"health under load p50 {self.percentile(health, 50) * ms:.1f} ms  "
            f"p95 {self.percentile(health, 95) * ms:.1f} ms  ({len(health)} probes)",
            f"errors {self.error_count}" + (f"  first: {self.errors[0]}" if self.errors else ""),
        ]


async def explain(client: httpx.AsyncClient, url: str, image: Path) -> tuple[float, str]:
    """One ``POST /api/explain`` like the page sends; returns (seconds, top label)."""
    started = time.perf_counter()
    with open(image, "rb") as photo:
        response = await client.post(f"{url}/api/explain", data={"topk": "5"},
                                     files={"file": (image.name, photo.read(), "image/jpeg")})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{image.name}: HTTP {response.status_code} {response.text[:200]}")
    return elapsed, response.json()["predictions"][0]["label"]


async def run_load(url: str, images: list[Path], requests: int = 200, concurrency: int = 8,
                   timeout: float = 120.0) -> LoadReport:
    """Warm up serially (one request per image), then ``requests`` at ``concurrency``."""
    report = LoadReport(requests, concurrency)
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        expected = {}
        for image in images:
            expected[image] = (await explain(client, url, image))[1]
        queue: asyncio.Queue[Path] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(images[i % len(images)])
        done = asyncio.Event()

        async def worker() -> None:
            while not queue.empty():
                image = queue.get_nowait()
                try:
                    seconds, label = await explain(client, url, image)
                except Exception as error:  # noqa: BLE001 - every failure is counted
                    report.errors.append(f"{type(error).__name__}: {error}".splitlines()[0])
                    continue
                if label != expected[image]:
                    report.errors.append(f"{image.name}: top label {label!r}, "
                                         f"expected {expected[image]!r}")
                else:
                    report.latencies.append(seconds)

        async def probe_health() -> None:
            while not done.is_set():
                started = time.perf_counter()
                response = await client.get(f"{url}/api/health")
                if response.status_code == 200:
                    report.health_latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)

        started = time.perf_counter()
        prober = asyncio.create_task(probe_health())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
        done.set()
        await prober
    return report


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def camloc_server(extra_args: list[str], startup_timeout: float = 180.0):
    """``camloc serve`` on a free port of 127.0.0.1 in a subprocess; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "camloc.cli", "serve", "--port", str(port), *extra_args]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.poll() is not None:
                raise SystemExit(f"camloc serve exited: {server.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("camloc serve did not start in time")
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start `camloc serve` here)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="folder of .jpg photos")
    parser.add_argument("--server-args", default="", help="extra `camloc serve` arguments")
    args = parser.parse_args(argv)
    images = sorted(args.images.glob("*.jpg"))
    if not images:
        raise SystemExit(f"no .jpg images in {args.images}")

    def measure(url: str) -> LoadReport:
        return asyncio.run(run_load(url, images, args.requests, args.concurrency))

    if args.url:
        report = measure(args.url.rstrip("/"))
    else:
        with camloc_server(args.server_args.split()) as url:
            report = measure(url)
    print(f"camloc serve load test: {len(images)} photos ({', '.join(p.name for p in images)}), "
          f"{os.cpu_count()} CPUs")
    print("\n".join(report.lines()))
    return 1 if report.error_count else 0


if __name__ == "__main__":
    sys.exit(main())
