"""Load test of ``camloc serve``: N explain requests at concurrency C against 127.0.0.1.

Reports p50/p95 latency, throughput and the error count (which must be 0), and, while the
load runs, the latency of ``GET /api/health`` (the event loop must stay responsive). A
response whose top label differs from the same image's label in a serial warm-up counts as
an error too (it would mean concurrent requests got mixed up).

    python benchmarks/load_serve.py                      # starts `camloc serve` itself
    python benchmarks/load_serve.py --requests 200 --concurrency 8
    python benchmarks/load_serve.py --url http://127.0.0.1:8000   # an already running server
    python benchmarks/load_serve.py --mixed --requests 96 --concurrency 8,32   # adversarial mix
    python benchmarks/load_serve.py --compare --requests 96 --concurrency 1,8,32  # batching on/off
    python benchmarks/load_serve.py --compare --baseline-args "--runtime torch --max-batch 1" \
        --batch-args "" --concurrency 1,8,32   # the default server against eager PyTorch alone
    python benchmarks/load_serve.py --compare --baseline-src /tmp/earlier/src --baseline-args "" \
        --batch-args "" --concurrency 1,8,32   # against an earlier camloc's server

``--compare``: two servers side by side, a baseline (``--baseline-args``, default
``--max-batch 1``: each request's forward pass alone; ``--runtime torch --max-batch 1`` is the
server with neither a faster runtime nor batching) and the default micro-batching
(``--batch-args``, default ``--max-batch 8``), both with ``--server-args``, loaded
in turn (round-robin, ``--rounds`` times, the order alternating) at each concurrency with
the same photos; prints images/s, p50/p95 latency and the server's CPU time per image (less
sensitive than wall time to other work on the machine) of each, their ratios, and the mean
batch (``GET /api/stats``). ``--baseline-src SRC`` runs the baseline from the ``src`` folder
of an earlier camloc checkout (``git worktree add /tmp/earlier COMMIT``), with its own
defaults; a server without ``/api/stats`` shows no mean batch.

``--mixed``: normal photos among adversarial requests (a 120 KB PNG of 6000x6000 pixels with
topk=20, 20 classes on a 1000x1000 PNG with max_side=0, a 4000x3000 PNG with max_side=0,
random bytes, a truncated JPEG, a PNG header claiming 2000 megapixels), each kind with the
status it must get; reports p50/p95 latency per kind, answers by status, the health probe's
worst latency (must stay under 1 s) and the server's resident memory (``VmRSS`` of its
process, sampled every 50 ms) idle before, at its peak during, and after each load (must
come back within 20% of idle; "idle" is after a warm-up with every kind once and a burst of
16 photos, so that a batching server's runtime has held a full batch).

Exit status 1 when any request failed. Stops by itself: a fixed number of requests, each
with a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
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

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
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


async def expected_labels(url: str, images: list[Path], timeout: float = 120.0) -> dict[Path, str]:
    """Each image's top label, one request at a time (also warms the server up)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        return {image: (await explain(client, url, image))[1] for image in images}


async def run_load(url: str, images: list[Path], requests: int = 200, concurrency: int = 8,
                   timeout: float = 120.0, expected: dict[Path, str] | None = None) -> LoadReport:
    """Warm up serially (one request per image; skipped when ``expected`` labels are given),
    then ``requests`` at ``concurrency``."""
    report = LoadReport(requests, concurrency)
    limits = httpx.Limits(max_connections=concurrency + 2)
    if expected is None:
        expected = await expected_labels(url, images, timeout)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
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
    with camloc_server_process(extra_args, startup_timeout) as (url, _process):
        yield url


@contextmanager
def camloc_server_process(extra_args: list[str], startup_timeout: float = 180.0, src: Path | None = None):
    """``camloc serve`` on a free port of 127.0.0.1 in a subprocess (the camloc of ``src``, a
    checkout's source folder, when given); yields ``(URL, process)``."""
    port = free_port()
    command = [sys.executable, "-m", "camloc.cli", "serve", "--port", str(port), *extra_args]
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# --------------------------------------------------------------------------- the adversarial mix


def _png(width: int, height: int, color=(120, 90, 60)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix: its upload, form fields, the statuses it may get, weight."""

    name: str
    data: bytes
    form: dict
    expected: tuple[int, ...]
    weight: int


def mixed_kinds(images: list[Path]) -> list[Kind]:
    photo = images[0].read_bytes()
    rng = random.Random(0)
    return [
        Kind("photo topk=5", photo, {"topk": "5"}, (200,), 12),
        Kind("6000x6000 PNG topk=20", _png(6000, 6000), {"topk": "20", "overlay": "false"}, (200,), 2),
        Kind("1000x1000 PNG 20 classes max_side=0", _png(1000, 1000),
             {"class": [str(i) for i in range(20)], "max_side": "0"}, (200,), 2),
        Kind("4000x3000 PNG max_side=0", _png(4000, 3000, (30, 160, 90)), {"max_side": "0"}, (200,), 2),
        Kind("random bytes", rng.randbytes(5000), {}, (400,), 1),
        Kind("truncated JPEG", photo[: len(photo) // 3], {}, (400,), 1),
        Kind("PNG header of 50000x40000", _png_header(50_000, 40_000), {}, (413,), 1),
    ]


BURST = 16  # concurrent photos in the warm-up of --mixed (more than the default --max-batch)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class MixedReport:
    requests: int
    concurrency: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    health_latencies: list[float] = field(default_factory=list)
    health_failures: int = 0
    rss_idle: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        def q(values, p):
            return LoadReport.percentile(values, p) * 1000

        every = [v for values in self.latencies.values() for v in values]
        lines = [f"mixed load: {self.requests} requests at concurrency {self.concurrency}, wall {self.seconds:.1f} s",
                 f"  all answers      p50 {q(every, 50):6.0f} ms  p95 {q(every, 95):6.0f} ms"]
        for name, values in self.latencies.items():
            lines.append(f"  {name:<36} n={len(values):<3} p50 {q(values, 50):6.0f} ms  p95 {q(values, 95):6.0f} ms")
        health = self.health_latencies
        lines += [
            "  answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            f"  health under load: p50 {q(health, 50):.1f} ms, max {max(health, default=0) * 1000:.0f} ms, "
            f"{len(health)} probes, {self.health_failures} failed or over 1 s",
            f"  server RSS: idle {self.rss_idle:.0f} MB, peak during {self.rss_peak:.0f} MB, "
            f"after {self.rss_after:.0f} MB ({(self.rss_after / self.rss_idle - 1) * 100:+.0f}% of idle)",
            f"  errors {len(self.errors)}" + (f"  first: {self.errors[0]}" if self.errors else ""),
        ]
        return lines

    @property
    def ok(self) -> bool:
        return not self.errors and not self.health_failures and self.rss_after <= 1.2 * self.rss_idle


async def run_mixed(url: str, pid: int, images: list[Path], requests: int = 96, concurrency: int = 8,
                    timeout: float = 600.0, settle: float = 5.0, seed: int = 0) -> MixedReport:
    """``requests`` of the adversarial mix at ``concurrency``, health probed every 100 ms,
    the server's memory sampled every 50 ms."""
    report = MixedReport(requests, concurrency)
    kinds = mixed_kinds(images)
    rng = random.Random(seed)
    plan = rng.choices(kinds, weights=[k.weight for k in kinds], k=requests)
    for kind in kinds:  # every kind at least once
        if kind not in plan:
            plan[rng.randrange(requests)] = kind
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for kind in kinds:  # warm: every code path loaded once, so "idle" is a served server's
            await client.post(f"{url}/api/explain", data=kind.form,
                              files={"file": ("upload", kind.data, "application/octet-stream")})
        photo = kinds[0]  # and a burst, so that a batching server has run a full batch once
        await asyncio.gather(*(client.post(f"{url}/api/explain", data=photo.form,
                                           files={"file": ("upload", photo.data, "application/octet-stream")})
                               for _ in range(BURST)))
        await asyncio.sleep(settle)
        report.rss_idle = rss_mb(pid)
        queue: asyncio.Queue[Kind] = asyncio.Queue()
        for kind in plan:
            queue.put_nowait(kind)
        done = asyncio.Event()

        async def worker() -> None:
            while not queue.empty():
                kind = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/api/explain", data=kind.form,
                                                 files={"file": ("upload", kind.data, "application/octet-stream")})
                except Exception as error:  # noqa: BLE001 - every failure is counted
                    report.errors.append(f"{kind.name}: {type(error).__name__}: {error}".splitlines()[0])
                    continue
                report.statuses[response.status_code] += 1
                report.latencies[kind.name].append(time.perf_counter() - started)
                if response.status_code not in kind.expected:
                    report.errors.append(f"{kind.name}: HTTP {response.status_code} {response.text[:160]}")

        async def probe_health() -> None:
            async with httpx.AsyncClient(timeout=1.0) as prober:
                while not done.is_set():
                    started = time.perf_counter()
                    try:
                        response = await prober.get(f"{url}/api/health")
                        elapsed = time.perf_counter() - started
                        report.health_latencies.append(elapsed)
                        if response.status_code != 200 or elapsed > 1.0:
                            report.health_failures += 1
                    except httpx.HTTPError:
                        report.health_failures += 1
                    await asyncio.sleep(0.1)

        async def sample_memory() -> None:
            while not done.is_set():
                report.rss_peak = max(report.rss_peak, rss_mb(pid))
                await asyncio.sleep(0.05)

        started = time.perf_counter()
        watchers = [asyncio.create_task(probe_health()), asyncio.create_task(sample_memory())]
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
        done.set()
        await asyncio.gather(*watchers)
        await asyncio.sleep(settle)
        report.rss_after = rss_mb(pid)
        if (await client.get(f"{url}/api/health")).status_code != 200:
            report.errors.append("the server does not answer after the load")
    return report


# --------------------------------------------------------------------------- batching on and off


@dataclass
class Contender:
    """One server of ``--compare``: its name, URL, expected labels, and its loads per concurrency."""

    name: str
    url: str
    pid: int
    expected: dict[Path, str] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # server CPU s per load
    loads: dict[int, list[LoadReport]] = field(default_factory=lambda: defaultdict(list))
    batches: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # passes, images

    def throughput(self, concurrency: int) -> float:
        loads = self.loads[concurrency]
        return sum(len(r.latencies) for r in loads) / max(sum(r.seconds for r in loads), 1e-9)

    def latency(self, concurrency: int, q: float) -> float:
        return LoadReport.percentile([v for r in self.loads[concurrency] for v in r.latencies], q)

    def errors(self, concurrency: int) -> list[str]:
        return [e for r in self.loads[concurrency] for e in r.errors]

    def cpu_per_image(self, concurrency: int) -> float:
        """The server's CPU seconds (all its threads) per answered image."""
        return sum(self.cpu[concurrency]) / max(sum(len(r.latencies) for r in self.loads[concurrency]), 1)

    def mean_batch(self, concurrency: int) -> str:
        passes = sum(p for p, _ in self.batches[concurrency])
        return f"{sum(i for _, i in self.batches[concurrency]) / passes:.2f}" if passes else "—"


def stats(url: str) -> dict:
    """The server's counters; zeros from a server without ``/api/stats`` (an earlier camloc)."""
    response = httpx.get(f"{url}/api/stats", timeout=30)
    if response.status_code == 404:
        return {"forward_passes": 0, "images": 0}
    response.raise_for_status()
    return response.json()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``), all threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_table(contenders: list[Contender], levels: list[int]) -> list[str]:
    lines = ["| concurrency | server | images/s | p50 ms | p95 ms | server CPU ms / image | mean batch | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for concurrency in levels:
        for contender in contenders:
            lines.append(f"| {concurrency} | {contender.name} | {contender.throughput(concurrency):.2f} | "
                         f"{contender.latency(concurrency, 50) * 1000:.0f} | "
                         f"{contender.latency(concurrency, 95) * 1000:.0f} | "
                         f"{contender.cpu_per_image(concurrency) * 1000:.0f} | "
                         f"{contender.mean_batch(concurrency)} | {len(contender.errors(concurrency))} |")
        first, second = contenders
        lines.append(f"| {concurrency} | ratio second / first | "
                     f"**{second.throughput(concurrency) / first.throughput(concurrency):.2f}×** | "
                     f"{second.latency(concurrency, 50) / first.latency(concurrency, 50):.2f}× | "
                     f"{second.latency(concurrency, 95) / first.latency(concurrency, 95):.2f}× | "
                     f"{second.cpu_per_image(concurrency) / first.cpu_per_image(concurrency):.2f}× | | |")
    return lines


def main_compare(args: argparse.Namespace, images: list[Path]) -> int:
    levels = [int(c) for c in str(args.concurrency).split(",")]
    common = args.server_args.split()
    baseline = f"camloc of {args.baseline_src} " if args.baseline_src else ""
    setups = [(baseline + (args.baseline_args or "(defaults)"), [*common, *args.baseline_args.split()]),
              (args.batch_args or "(defaults)", [*common, *args.batch_args.split()])]
    print(f"camloc serve, {setups[0][0]} against {setups[1][0]}: {len(images)} photos, {os.cpu_count()} CPUs, "
          f"{args.requests} requests per load, {args.rounds} round(s), concurrency {levels}; "
          f"server arguments {' '.join(common) or '(defaults)'}", flush=True)
    with camloc_server_process(setups[0][1], src=args.baseline_src) as first, \
            camloc_server_process(setups[1][1]) as second:
        contenders = [Contender(setups[0][0], first[0], first[1].pid),
                      Contender(setups[1][0], second[0], second[1].pid)]
        for contender in contenders:
            contender.expected = asyncio.run(expected_labels(contender.url, images))
        for round_ in range(args.rounds):
            for concurrency in levels:
                order = contenders if (round_ + concurrency) % 2 == 0 else contenders[::-1]
                for contender in order:  # round-robin: the machine's drift hits both alike
                    before, cpu = stats(contender.url), cpu_seconds(contender.pid)
                    report = asyncio.run(run_load(contender.url, images, args.requests, concurrency,
                                                  expected=contender.expected))
                    after = stats(contender.url)
                    contender.cpu[concurrency].append(cpu_seconds(contender.pid) - cpu)
                    contender.loads[concurrency].append(report)
                    contender.batches[concurrency].append((after["forward_passes"] - before["forward_passes"],
                                                           after["images"] - before["images"]))
                    print(f"round {round_ + 1}, concurrency {concurrency}, {contender.name}: "
                          f"{len(report.latencies) / max(report.seconds, 1e-9):.2f} images/s, "
                          f"p50 {report.percentile(report.latencies, 50) * 1000:.0f} ms, "
                          f"p95 {report.percentile(report.latencies, 95) * 1000:.0f} ms, "
                          f"server CPU {contender.cpu[concurrency][-1] * 1000 / max(len(report.latencies), 1):.0f} "
                          f"ms/image, errors {report.error_count}", flush=True)
    print("\n".join(compare_table(contenders, levels)))
    failed = [e for c in contenders for level in levels for e in c.errors(level)]
    if failed:
        print(f"errors: {len(failed)}, first: {failed[0]}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start `camloc serve` here)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="8", help="with --mixed: several, e.g. 8,32")
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="folder of .jpg photos")
    parser.add_argument("--server-args", default="", help="extra `camloc serve` arguments")
    parser.add_argument("--mixed", action="store_true", help="the adversarial mix (starts its own server)")
    parser.add_argument("--compare", action="store_true", help="--baseline-args against --batch-args, "
                        "round-robin (starts both servers)")
    parser.add_argument("--baseline-args", default="--max-batch 1", help="with --compare: the first "
                        "server's arguments (added to --server-args)")
    parser.add_argument("--baseline-src", type=Path, default=None, help="with --compare: run the baseline "
                        "server from this src folder of an earlier camloc checkout")
    parser.add_argument("--batch-args", default="--max-batch 8", help="with --compare: the batched server's "
                        "arguments (added to --server-args)")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: loads per server and concurrency")
    parser.add_argument("--max-images", type=int, default=0, help="use at most this many photos (0: all)")
    args = parser.parse_args(argv)
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if args.max_images:
        images = images[: args.max_images]
    if not images:
        raise SystemExit(f"no .jpg images in {args.images}")
    if args.mixed:
        return main_mixed(args, images)
    if args.compare:
        return main_compare(args, images)

    def measure(url: str) -> LoadReport:
        return asyncio.run(run_load(url, images, args.requests, int(args.concurrency)))

    if args.url:
        report = measure(args.url.rstrip("/"))
    else:
        with camloc_server(args.server_args.split()) as url:
            report = measure(url)
    print(f"camloc serve load test: {len(images)} photos ({', '.join(p.name for p in images)}), "
          f"{os.cpu_count()} CPUs")
    print("\n".join(report.lines()))
    return 1 if report.error_count else 0


def main_mixed(args: argparse.Namespace, images: list[Path]) -> int:
    levels = [int(c) for c in str(args.concurrency).split(",")]
    print(f"camloc serve, adversarial mix: {os.cpu_count()} CPUs; kinds (weight):",
          ", ".join(f"{k.name} ({k.weight})" for k in mixed_kinds(images)), flush=True)
    failed = False
    with camloc_server_process(args.server_args.split()) as (url, server):
        for concurrency in levels:
            report = asyncio.run(run_mixed(url, server.pid, images, args.requests, concurrency))
            print("\n".join(report.lines()), flush=True)
            failed |= not report.ok
        print(f"server peak RSS over the whole run (VmHWM): {rss_mb(server.pid, 'VmHWM'):.0f} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
