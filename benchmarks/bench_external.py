"""What camloc adds on top of running a Keras or ONNX classifier by itself.

For each model: the plain network (onnxruntime session on the original graph / the Keras
model called directly) against camloc's CAM pass (the same network giving logits and
features, plus top-k CAMs at feature resolution), same batch, same run. Prints ratios.

Times are CPU seconds (``time.process_time``) with one thread for torch and onnxruntime,
so that a machine shared with other jobs still gives comparable numbers.

    PYTHONPATH=src python benchmarks/bench_external.py [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import camloc
from camloc.methods import CAMMethod, ClassSelection
from camloc.models.keras import import_keras
from camloc.onnx_export import export_onnx


def best_of(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def report(label: str, plain: float, cam: float, batch: int) -> None:
    print(f"{label:<34} plain {plain * 1e3 / batch:7.1f} ms/image   with CAMs "
          f"{cam * 1e3 / batch:7.1f} ms/image   ratio {cam / plain:5.3f}   (CPU time, 1 thread)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(1)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1

    def session(source):
        return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    folder = Path(tempfile.mkdtemp())
    selection = ClassSelection(topk=5)
    batch = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    path = export_onnx(camloc.load_model(), folder / "default.onnx", topk=5)
    adapter = camloc.load_model(path)
    adapter.session = session(adapter.onnx_bytes)
    import onnx

    plain_model = onnx.load(str(path))  # logits only: drop the classes and cams outputs
    del plain_model.graph.output[1:]
    plain = session(plain_model.SerializeToString())
    array = batch.numpy()
    method = CAMMethod(adapter)
    report("ONNX efficientnet_lite0 (ORT)", best_of(lambda: plain.run(None, {"input": array}),
                                                    args.repeats),
           best_of(lambda: method(batch, selection), args.repeats), args.batch)
    full = session(str(path))
    report("  in-graph CAMs (exported outputs)",
           best_of(lambda: plain.run(None, {"input": array}), args.repeats),
           best_of(lambda: full.run(None, {"input": array}), args.repeats), args.batch)

    keras = import_keras()
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    model.save(folder / "resnet50.keras")
    adapter = camloc.load_model(folder / "resnet50.keras")
    nhwc = torch.from_numpy(np.ascontiguousarray(batch.permute(0, 2, 3, 1).numpy()))
    method = CAMMethod(adapter)

    def keras_plain():
        with torch.no_grad():
            model(nhwc, training=False)

    report("Keras ResNet50 (torch backend)", best_of(keras_plain, args.repeats),
           best_of(lambda: method(batch, selection), args.repeats), args.batch)


if __name__ == "__main__":
    main()
