"""One contender of ``bench_runtime.py``, in a process of its own.

    python benchmarks/contender.py NAME [--workers W] [--default-malloc]

``NAME`` is a runtime (``torch``, ``onnxruntime``, ``openvino``, ``auto``: the folder job of
`camloc run` with that runtime), ``forward-only`` (decode, preprocess and the eager forward
pass, nothing else) or ``earlier`` (the folder job of whichever camloc ``PYTHONPATH`` gives,
e.g. an earlier checkout's ``src``). Each contender runs alone in its process: runtimes that
share a process share its thread pools, and one runtime's idle threads slow another's.

It loads its model once, prints one JSON line (``{"ready": ..., "runtime": ...}``), then
answers each JSON line on stdin with one on stdout:

* ``{"run": [paths], "out": dir, "batch": n}`` → ``{"seconds", "done", "cpu"}``: the job's own
  seconds (start-up excluded), images done, and the CPU seconds of this process and its
  children meanwhile;
* ``{"forward": [paths], "batch": n}`` → ``{"seconds"}``: one forward pass over the first ``n``
  paths (decoded once and kept), with walkcam's guide layer as the default method asks.

Only names that every camloc version has are imported at the top, so an earlier version runs
here unchanged.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import camloc
from camloc.allocator import tune_allocator


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (decoding workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def job():
    """The folder job's ``(RunOptions, run)`` of the camloc this process imports."""
    try:
        from camloc.jobs.local import RunOptions, run
    except ImportError:  # camloc 0.1.0
        from camloc.runner import RunOptions, run
    return RunOptions, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    if not args.default_malloc:
        tune_allocator()  # as the camloc command does
    if args.name == "earlier":
        model = camloc.load_model()
    else:
        runtime = "torch" if args.name == "forward-only" else args.name
        model = camloc.load_model(dilate=True, runtime=runtime)
    RunOptions, run = job()
    if args.name == "forward-only":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_run import forward_only
    decoded: dict[tuple, object] = {}
    print(json.dumps({"ready": args.name, "runtime": getattr(model, "runtime", "torch")}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        before = cpu_seconds()
        if "run" in request and args.name == "forward-only":
            rate = forward_only(model, request["run"], request["batch"], args.workers)
            answer = {"seconds": len(request["run"]) / rate, "done": len(request["run"])}
        elif "run" in request:
            options = RunOptions(out=request["out"], batch_size=request["batch"], workers=args.workers)
            summary = run(model, request["run"], options)
            answer = {"seconds": summary.seconds, "done": summary.done}
        else:
            from camloc.dataset import batches
            from camloc.images import stack_images

            key = (tuple(request["forward"]), request["batch"])
            if key not in decoded:
                paths = [Path(p) for p in request["forward"][: request["batch"]]]
                [items] = batches(paths, model, "pad", 10**9, model.input_size, len(paths), 0)
                decoded[key] = (stack_images([item.loaded().tensor for item in items]), model.guide_layer())
            images, guide = decoded[key]
            started = time.perf_counter()
            model.forward_with_guide(images, guide)
            answer = {"seconds": time.perf_counter() - started}
        answer["cpu"] = cpu_seconds() - before
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
