"""CPU and GPU give the same answers (skipped where there is no CUDA device)."""

from __future__ import annotations

import json

import pytest
import torch

import camloc
from camloc.jobs.local import RunOptions, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_cpu_and_gpu_agree(photos, tmp_path):
    paths = [photos["chelsea_cat"], photos["coffee"], photos["motorcycle"]]
    cpu = camloc.explain(camloc.load_model(device="cpu"), paths, topk=3)
    gpu_model = camloc.load_model(device="cuda")
    gpu = camloc.explain(gpu_model, paths, topk=3)
    for a, b in zip(cpu, gpu, strict=True):
        assert [t.index for t in a.targets] == [t.index for t in b.targets]
        assert [t.score for t in a.targets] == pytest.approx([t.score for t in b.targets], abs=2e-3)
        assert b.normalized.device.type == "cuda"
        torch.testing.assert_close(a.normalized, b.normalized.cpu(), atol=2e-2, rtol=0)
        for boxes_a, boxes_b in zip(a.boxes, b.boxes, strict=True):
            gap = torch.tensor(boxes_a, dtype=torch.float) - torch.tensor(boxes_b, dtype=torch.float)
            assert gap.abs().max() <= 3
    summary = run(gpu_model, [str(p) for p in paths], RunOptions.build(out=tmp_path / "gpu", topk=2, amp=True))
    assert summary.done == 3
    records = [json.loads(line) for line in (tmp_path / "gpu" / "results.jsonl").read_text().splitlines()]
    assert [r["cams"][0]["index"] for r in records] == [r.targets[0].index for r in cpu]
