"""Where the network's forward pass runs: eager PyTorch, onnxruntime or OpenVINO.

The runtime is a property of the loaded model: ``load_model(..., runtime="auto")`` returns an
adapter whose :meth:`~ClassifierAdapter.forward_with_features` runs in the chosen runtime,
and every door (API, ``camloc run``, ``eval``, ``serve``) uses it as it is.

- ``torch``: eager PyTorch (channels_last), the reference.
- ``onnxruntime`` / ``openvino``: the network (dilated as loaded) exported once to ONNX as a
  module returning ``(logits, features)`` with a dynamic batch, run in float32 with the
  runtime's graph optimisations on as many threads as PyTorch uses. CAMs use the runtime's
  own features and the classifier's weights, so ``mean_xy(CAM) + b == logit`` holds for the
  runtime's logits (checked when the runtime is probed).
- ``auto``: the fastest of the available runtimes whose answers agree with eager PyTorch
  (identical top-1 where the margin is not a tie, logits and maps within 1e-3 of their
  range, on a probe batch of smooth random images), timed round-robin on that batch. The
  choice is made once per network and machine and cached on disk
  (:mod:`camloc.models.cache`) with the exported graph; later loads reuse both without
  building or tracing the PyTorch network at all (it is built on first use, e.g. by a
  gradient method). When no other runtime is faster or agrees, ``auto`` keeps eager torch
  and ``log`` gets one line saying why.

Gradient methods (Grad-CAM family, Score-CAM) hook PyTorch modules and need autograd: they
always run the eager network (``adapter.model``) whatever the runtime. The runtimes serve
the model's own input size on CPU; another size (``--input-size``, ``--scales`` views) or
device runs in eager PyTorch.

>>> check_runtime("OpenVINO"), choose({"torch": 1.0, "onnxruntime": 0.6, "openvino": 0.4})
('openvino', 'openvino')
>>> choose({"torch": 1.0, "onnxruntime": 0.95})  # not 10% faster: eager torch stays
'torch'
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RUNTIMES
from ..errors import ModelError
from .adapter import ClassifierAdapter, inference_mode
from .cache import cache_dir, digest, read_record, versions, write_bytes, write_record
from .external import ExternalAdapter

EXTERNAL_RUNTIMES = ("onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
PROBE_BATCH = 8
PROBE_REPEATS = 3
MIN_GAIN = 1.1  # a runtime must beat eager torch by 10% on the probe to be chosen
Log = Callable[[str], None]


def available(runtime: str) -> bool:
    """Whether ``runtime``'s packages are installed (nothing imported)."""
    if runtime == "torch":
        return True
    return all(importlib.util.find_spec(name) is not None for name in _PACKAGES.get(runtime, ("?",)))


def check_runtime(runtime: str) -> str:
    name = (runtime or "torch").strip().lower()
    if name not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    return name


def threads() -> int:
    """Intra-op threads for a runtime: as many as PyTorch uses (the cores, or OMP_NUM_THREADS)."""
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------- runners


class Runner:
    """Runs an exported graph with outputs ``outputs`` (``logits``, ``features``, and for
    walkcam a ``guide`` layer's output); built lazily, picklable (the session is rebuilt
    after unpickling, e.g. in a Ray actor)."""

    runtime = ""

    def __init__(self, onnx_path: str | os.PathLike, outputs: tuple[str, ...] = ("logits", "features")):
        self.onnx_path = str(onnx_path)
        self.outputs = tuple(outputs)
        self._state: Any = None

    def __getstate__(self) -> dict:
        try:  # the graph travels too: another machine (a Ray node) has another cache
            graph = Path(self.onnx_path).read_bytes()
        except OSError:
            graph = None
        return {"onnx_path": self.onnx_path, "outputs": self.outputs, "_state": None, "_graph": graph}

    def ready(self) -> Runner:
        if self._state is None:
            graph = self.__dict__.pop("_graph", None)
            if graph is not None and not Path(self.onnx_path).is_file():
                import tempfile

                handle, self.onnx_path = tempfile.mkstemp(prefix="camloc-", suffix=".onnx")
                with os.fdopen(handle, "wb") as stream:
                    stream.write(graph)
            self._state = self.build()
        return self

    def build(self) -> Any:
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(torch.from_numpy(output) for output in self.ready().run(array))

    def run(self, array: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def build(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops: decoding workers and writer threads share the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])

    def run(self, array: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._state.run(list(self.outputs), {"input": array}))


class OpenVinoRunner(Runner):
    runtime = "openvino"

    def build(self) -> Any:
        import openvino

        core = openvino.Core()
        blobs = cache_dir() / "openvino"
        try:  # compiled graphs are cached too: a later start imports instead of compiling
            blobs.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blobs)})
        except (OSError, RuntimeError):
            pass
        compiled = core.compile_model(self.onnx_path, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads()})
        return compiled, compiled.create_infer_request()

    def run(self, array: np.ndarray) -> tuple[np.ndarray, ...]:
        compiled, request = self._state
        results = request.infer({0: array})
        # the request reuses its output memory: copy before the next batch overwrites it
        return tuple(np.array(results[compiled.output(name)], copy=True) for name in self.outputs)


RUNNERS: dict[str, type[Runner]] = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}


# --------------------------------------------------------------------------- the adapter


class RuntimeAdapter(ClassifierAdapter):
    """A :class:`ClassifierAdapter` whose CAM forward pass runs in another runtime.

    ``model`` is the eager PyTorch network, for gradient methods and anything that hooks
    modules; when the adapter was rebuilt from the cache it is built on first use only.
    """

    _network: nn.Module | Callable[[], nn.Module]

    def __init__(self, runtime: str, runner: Runner, runtime_size: tuple[int, int],
                 network: nn.Module | Callable[[], nn.Module], **fields: Any):
        super().__init__(model=network, **fields)  # type: ignore[arg-type]
        self.runtime = runtime
        self.runner = runner
        self.runtime_size = tuple(runtime_size)
        self.guided: dict[str, Runner | None] = {}  # walkcam's graphs, by guide layer (None: eager)

    @property
    def model(self) -> nn.Module:
        if not isinstance(self._network, nn.Module):
            network = self._network()
            network.eval()
            self._network = network
        return self._network

    @model.setter
    def model(self, value: nn.Module | Callable[[], nn.Module]) -> None:
        self._network = value

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ClassifierAdapter:
        """Itself on the CPU; elsewhere (the runtimes run on CPUs) the eager adapter there."""
        if torch.device(device).type == "cpu":
            return self
        return self.eager().to(device)

    def eager(self) -> ClassifierAdapter:
        """The same model with its forward pass in eager PyTorch."""
        return ClassifierAdapter(
            model=self.model, weight=self.weight, bias=self.bias, neck=self.neck, pre_pool=self.pre_pool,
            fingerprint=self.fingerprint, **{name: getattr(self, name) for name in _FIELDS})

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_network"] = self.model  # a factory does not pickle; the network does
        return state

    def serves(self, batch: torch.Tensor) -> bool:
        """Whether the runtime runs ``batch``: the exported input size, on the CPU (else the
        eager network does)."""
        return tuple(batch.shape[-2:]) == self.runtime_size and batch.device.type == "cpu"

    def forward_with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_cam()
        if not self.serves(batch):
            with inference_mode(self.model):  # another size or device: the eager network
                return ClassifierAdapter.forward_with_features(self, batch)
        logits, features = self.runner(batch)
        return logits, features

    def guide_layer(self) -> str:
        """As the eager adapter's, remembered beside the runtime's graph, so that a later start
        finds it without building the PyTorch network."""
        remembered = Path(self.runner.onnx_path).parent / "guide-layer.txt"
        try:
            return remembered.read_text(encoding="utf-8").strip() or ClassifierAdapter.guide_layer(self)
        except OSError:
            layer = ClassifierAdapter.guide_layer(self)
            write_bytes(remembered, layer.encode("utf-8"))
            return layer

    def forward_with_guide(self, batch: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the eager adapter's, in the runtime: the network exported once more with the
        ``layer``'s output as a third output (cached beside the model's graph, kept only when
        it agrees with eager PyTorch); another size or device, or a graph that could not be
        made, runs the eager network."""
        self.require_cam()
        runner = None
        if self.serves(batch):
            if layer not in self.guided:
                self.guided[layer] = _guided_runner(self, layer)
            runner = self.guided[layer]
        if runner is None:
            with inference_mode(self.model):
                return ClassifierAdapter.forward_with_guide(self, batch, layer)
        logits, features, guide = runner(batch)
        return logits, features, guide


# --------------------------------------------------------------------------- export


class _FeaturesModule(nn.Module):
    def __init__(self, adapter: ClassifierAdapter, guide: str | None = None):
        super().__init__()
        self.adapter = adapter
        self.network = adapter.model
        self.guide = guide

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.guide is not None:
            return ClassifierAdapter.forward_with_guide(self.adapter, batch, self.guide)
        return ClassifierAdapter.forward_with_features(self.adapter, batch)


def export_features(adapter: ClassifierAdapter, path: Path, guide: str | None = None) -> Path:
    """Write ``adapter``'s network as ONNX with outputs ``logits`` and ``features`` (and the
    output of layer ``guide`` as ``guide``; dynamic batch; the network as loaded, dilation
    included)."""
    import io

    outputs = ["logits", "features"] if guide is None else ["logits", "features", "guide"]

    example = torch.zeros(1, 3, *adapter.input_size, device=adapter.device)
    buffer = io.BytesIO()
    with inference_mode(adapter.model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        # torch's stubs say a path; the TorchScript exporter (dynamo=False) writes to a file object too
        torch.onnx.export(_FeaturesModule(adapter, guide), (example,), buffer,  # type: ignore[arg-type]
                          dynamo=False, opset_version=17, input_names=["input"], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)})
    if not write_bytes(path, buffer.getvalue()):
        raise ModelError(f"cannot write the exported model to {path}")
    return path


def _guided_runner(adapter: RuntimeAdapter, layer: str) -> Runner | None:
    """A runner of ``adapter``'s network with ``layer``'s output too, in its runtime: the
    graph is exported once (beside the model's own) and kept only when its three outputs agree
    with eager PyTorch's on the probe images; ``None`` when it cannot be made or disagrees."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in layer)
    path = Path(adapter.runner.onnx_path).parent / f"guide-{safe}.onnx"
    outputs = ("logits", "features", "guide")
    runner = RUNNERS[adapter.runtime](path, outputs)
    if path.is_file():
        return runner
    try:
        eager = adapter.eager()
        export_features(eager, path, guide=layer)
        batch = probe_batch(eager, 2)
        with inference_mode(eager.model):
            reference = eager.forward_with_guide(batch, layer)
        candidate = runner(batch)
        span = (reference[2].amax() - reference[2].amin()).clamp_min(1e-6)
        if (agreement(eager, reference[:2], candidate[:2]) is None
                and float((candidate[2] - reference[2]).abs().max() / span) <= 1e-3):
            return runner
    except Exception:  # noqa: BLE001 - exporters and runtimes fail in many ways: eager instead
        pass
    path.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------- choosing


def network_key(adapter: ClassifierAdapter) -> str:
    """What decides a runtime's answers and speed: the network (structure and weights, as
    dilated), input size, library versions and the machine."""
    from .adapter import fingerprint

    return digest({
        "network": fingerprint(adapter.model), "dilated": adapter.dilated,
        "size": list(adapter.input_size), "pre_pool": [repr(step) for step in adapter.pre_pool],
        "versions": versions("torch", "onnx", "onnxruntime", "openvino"),
        "machine": machine(),
    })


def machine() -> list:
    """What a runtime's speed depends on: the CPU and the threads in use."""
    return [platform.machine(), _cpu_name(), os.cpu_count(), threads()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            return next((line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")), "")
    except OSError:
        return ""


def probe_batch(adapter: ClassifierAdapter, count: int = PROBE_BATCH) -> torch.Tensor:
    """Smooth random images (noise at 1/32 resolution, resampled), normalised like photos."""
    generator = torch.Generator().manual_seed(0)
    h, w = adapter.input_size
    coarse = torch.rand(count, 3, max(2, h // 32), max(2, w // 32), generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(adapter.mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.std).view(1, 3, 1, 1)
    return (images - mean) / std


def agreement(adapter: ClassifierAdapter, reference: tuple[torch.Tensor, ...],
              candidate: tuple[torch.Tensor, ...]) -> str | None:
    """``None`` when ``candidate``'s ``(logits, features)`` agree with ``reference``'s, else why not."""
    ref_logits, ref_features = (t.float() for t in reference[:2])
    logits, features = (t.float() for t in candidate[:2])
    if logits.shape != ref_logits.shape or features.shape != ref_features.shape:
        return "its outputs have other shapes"
    scale = 1 + ref_logits.abs().max().item()
    error = (logits - ref_logits).abs().max().item()
    if error > 1e-3 * scale:
        return f"its logits differ from eager PyTorch's by {error:.3g}"
    top2 = ref_logits.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * error  # ties within the error decide nothing
    if not torch.equal(logits.argmax(1)[decided], ref_logits.argmax(1)[decided]):
        return "its top-1 class differs from eager PyTorch's"
    classes = ref_logits.argmax(1)
    ref_maps, maps = _top_maps(adapter, ref_features, classes), _top_maps(adapter, features, classes)
    span = (ref_maps.amax(dim=(1, 2)) - ref_maps.amin(dim=(1, 2))).clamp_min(1e-6)
    map_error = ((maps - ref_maps).abs().amax(dim=(1, 2)) / span).max().item()
    if map_error > 1e-3:
        return f"its maps differ from eager PyTorch's by {map_error:.3g} of their range"
    weight, scale_k, bias = adapter.head(features)  # the CAM identity on the runtime's logits
    effective = weight[None] if scale_k is None else weight[None] * scale_k[:, None, :]
    rebuilt = torch.einsum("nck,nk->nc", effective, features.mean(dim=(2, 3))) + bias
    if not torch.allclose(rebuilt, logits, atol=1e-3 * scale, rtol=1e-3):
        return "its logits are not reproduced by its features and the classifier"
    return None


def _top_maps(adapter: ClassifierAdapter, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The CAM of ``classes (N,)``: ``(N, h, w)`` (as :func:`camloc.methods.cam.class_maps`)."""
    weight, scale, _ = adapter.head(features)
    chosen = weight[classes]
    if scale is not None:
        chosen = chosen * scale
    return torch.einsum("nk,nkhw->nhw", chosen, features)


def probe(adapter: ClassifierAdapter, candidates: dict[str, Runner]) -> dict[str, Any]:
    """Check each runtime against eager PyTorch and time all round-robin on the probe batch.

    Returns ``{"seconds": {runtime: s}, "refused": {runtime: why}}``."""
    batch = probe_batch(adapter)
    eager_batch = batch.to(adapter.device).contiguous(memory_format=torch.channels_last)

    def eager() -> tuple[torch.Tensor, torch.Tensor]:
        with inference_mode(adapter.model):
            return adapter.forward_with_features(eager_batch)

    reference = eager()
    contenders: dict[str, Callable[[], Any]] = {"torch": eager}
    refused: dict[str, str] = {}
    for name, runner in candidates.items():
        try:
            why = agreement(adapter, reference, runner(batch))
        except Exception as error:  # noqa: BLE001 - a runtime failing on this graph is a refusal
            first = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            why = f"it failed ({type(error).__name__}: {first})"
        if why:
            refused[name] = why
        else:
            contenders[name] = functools.partial(runner, batch)
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(PROBE_REPEATS):
        for name, function in contenders.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return {"seconds": best, "refused": refused}


def choose(seconds: dict[str, float]) -> str:
    """The fastest runtime, if it beats eager torch by :data:`MIN_GAIN`; else torch."""
    fastest = min(seconds, key=seconds.__getitem__)
    return fastest if seconds[fastest] * MIN_GAIN <= seconds["torch"] else "torch"


def with_runtime(adapter: ClassifierAdapter, runtime: str = "auto", log: Log | None = None,
                 source_key: str | None = None) -> ClassifierAdapter:
    """``adapter`` with its CAM forward pass in ``runtime`` (``"auto"``: chosen, cached).

    ``log`` gets one line when ``auto`` keeps eager torch for a reason worth saying.
    ``source_key`` (from :func:`camloc.models.registry.load_model`) lets a later load find
    the choice before building the network.
    """
    runtime = check_runtime(runtime)
    say = log or (lambda _line: None)
    if runtime == "torch" or isinstance(adapter, RuntimeAdapter):
        return adapter
    if isinstance(adapter, ExternalAdapter) or not isinstance(adapter.model, nn.Module):
        if runtime != "auto":
            raise ModelError(f"--runtime {runtime} runs PyTorch networks; {adapter.name} already runs "
                             f"in its own runtime ({adapter.source})")
        return adapter
    if adapter.head_error is not None:
        if runtime != "auto":
            say(f"runtime: {adapter.name} runs in eager PyTorch: plain CAM is not exact for it and "
                "gradient methods need autograd")
        return adapter
    if adapter.device.type != "cpu":
        if runtime != "auto":
            raise ModelError(f"the {runtime} runtime runs on the CPU; use --runtime torch on {adapter.device}")
        return adapter
    if runtime != "auto" and not available(runtime):
        raise ModelError(f"--runtime {runtime} needs {' and '.join(_PACKAGES[runtime])} "
                         f"(pip install {' '.join(_PACKAGES[runtime])})")
    key = network_key(adapter)
    folder = cache_dir() / "runtime" / key
    onnx_path = folder / "model.onnx"
    decision = read_record("runtime", key) if runtime == "auto" else None
    if decision is None:
        wanted = [r for r in EXTERNAL_RUNTIMES if available(r)] if runtime == "auto" else [runtime]
        if not wanted:
            say("runtime: eager PyTorch (neither onnxruntime nor openvino is installed: "
                "pip install onnxruntime openvino for faster CPU runs)")
            return adapter
        try:
            if not onnx_path.is_file():
                export_features(adapter, onnx_path)
        except Exception as error:  # noqa: BLE001 - exporters fail in many ways
            if runtime != "auto":
                raise ModelError(f"cannot export {adapter.name} for {runtime}: {error}") from None
            say(f"runtime: eager PyTorch ({adapter.name} cannot be exported to ONNX: "
                f"{str(error).strip().splitlines()[0][:120] if str(error) else type(error).__name__})")
            write_record("runtime", key, {"runtime": "torch", "why": "export failed"})
            return adapter
        runners = {name: RUNNERS[name](onnx_path) for name in wanted}
        if runtime != "auto":
            return _wrap(adapter, runners[runtime], source_key, key)
        result = probe(adapter, runners)
        chosen = choose(result["seconds"])
        why = "; ".join(f"{name}: {reason}" for name, reason in result["refused"].items())
        decision = {"runtime": chosen, "seconds": result["seconds"], "refused": result["refused"],
                    "why": why or ("no runtime beat eager PyTorch on this machine" if chosen == "torch" else "")}
        write_record("runtime", key, decision)
        if chosen == "torch":
            say(f"runtime: eager PyTorch ({decision['why']})")
    chosen = decision.get("runtime", "torch")
    if chosen == "torch" or not available(chosen) or not onnx_path.is_file():
        return adapter
    return _wrap(adapter, RUNNERS[chosen](onnx_path), source_key, key)


_FIELDS = ("name", "class_names", "input_size", "mean", "std", "feature_layer", "source",
           "box_threshold", "dilated")


def _wrap(adapter: ClassifierAdapter, runner: Runner, source_key: str | None, key: str) -> RuntimeAdapter:
    wrapped = RuntimeAdapter(
        runner.runtime, runner, adapter.input_size, adapter.model,
        weight=adapter.weight, bias=adapter.bias, neck=adapter.neck, pre_pool=adapter.pre_pool,
        fingerprint=adapter.fingerprint, **{name: getattr(adapter, name) for name in _FIELDS})
    if source_key is not None and not adapter.neck and not adapter.pre_pool:
        _remember(wrapped, source_key, key)
    return wrapped


# --------------------------------------------------------------------------- fast start


def _remember(adapter: RuntimeAdapter, source_key: str, key: str) -> None:
    """Store what rebuilding ``adapter`` needs without its PyTorch network."""
    head = cache_dir() / "runtime" / key / "head.pt"
    import io

    buffer = io.BytesIO()
    assert adapter.weight is not None  # only exact heads are wrapped
    torch.save({"weight": adapter.weight.detach().cpu(),
                "bias": None if adapter.bias is None else adapter.bias.detach().cpu()}, buffer)
    if write_bytes(head, buffer.getvalue()):
        write_record("sources", source_key, {
            "runtime": adapter.runtime, "key": key, "runtime_size": list(adapter.runtime_size),
            "fields": {name: getattr(adapter, name) for name in _FIELDS}, "fingerprint": adapter.fingerprint})


def from_source(source_key: str, runtime: str, network: Callable[[], nn.Module]) -> RuntimeAdapter | None:
    """The adapter a previous load with ``runtime`` built for this source, without building
    the network (``network()`` builds it on first use); ``None`` when not cached."""
    record = read_record("sources", source_key)
    if record is None or (runtime != "auto" and record.get("runtime") != runtime):
        return None
    chosen = record.get("runtime")
    folder = cache_dir() / "runtime" / str(record.get("key"))
    if chosen not in RUNNERS or not available(chosen) or not (folder / "model.onnx").is_file():
        return None
    if runtime == "auto" and (read_record("runtime", record["key"]) or {}).get("runtime") != chosen:
        return None
    try:
        head = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
        fields = dict(record["fields"])
        fields["input_size"] = tuple(fields["input_size"])
        fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
        return RuntimeAdapter(chosen, RUNNERS[chosen](folder / "model.onnx"), tuple(record["runtime_size"]),
                              network, weight=head["weight"], bias=head["bias"],
                              fingerprint=record.get("fingerprint"), **fields)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):
        return None
