"""Gradient methods: exactness against CAM, the published formulas and two established
implementations (pytorch-grad-cam, TorchCAM), batching, state restoration, errors."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camloc
from camloc import ClassSelection, ModelError, get_method
from camloc.methods import GradCAM, ScoreCAM, SpatialLayer, spatial_layer

pytestmark = pytest.mark.timeout(300)
EXAMPLE = "examples/images/chelsea_cat.jpg"


def calibrated(net: nn.Module, size: int) -> nn.Module:
    """Random weights with BatchNorm statistics of random inputs, so activations are O(1)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1)))
    return net.eval()


def build(name: str) -> tuple[camloc.ClassifierAdapter, int]:
    torch.manual_seed(0)
    if name == "vit_tiny_patch16_224":
        net, size = timm.create_model(name, pretrained=False, img_size=112), 112  # 7x7 tokens
    else:
        net, size = getattr(torchvision.models, name)(), 96
    return camloc.adapt(calibrated(net, size), name=name, input_size=size), size


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def model(models: dict, name: str) -> tuple[camloc.ClassifierAdapter, int]:
    if name not in models:
        models[name] = build(name)
    return models[name]


def batch(size: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def scale_like_pytorch_grad_cam(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` on ``(N, h, w)``: ``(m - min) / (1e-7 + max)``."""
    shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
    return shifted / (1e-7 + shifted.amax(dim=(1, 2), keepdim=True))


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """The reshape transform of pytorch-grad-cam's ViT tutorial: drop the class token."""
    grid = int(math.isqrt(tokens.shape[1] - 1))
    return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- exactness


def test_gradcam_is_relu_cam_over_hw_on_gap_linear_model(models):
    adapter, size = model(models, "resnet18")
    x = batch(size, 3)
    for selection in (ClassSelection(topk=2), ClassSelection(classes=(0, 1, 500, 998))):
        check_gradcam_is_relu_cam(adapter, x, selection)
    assert (get_method("cam", adapter)(x, ClassSelection(classes=(0, 1, 500, 998))).maps < 0).any()


def check_gradcam_is_relu_cam(adapter, x, selection):
    grad = get_method("gradcam", adapter)(x, selection)
    cam = get_method("cam", adapter)(x, selection)
    assert torch.equal(grad.classes, cam.classes)
    h, w = cam.maps.shape[-2:]
    # ∂logit_c / ∂A_k(x, y) = W_ck / hw, so Grad-CAM = ReLU(CAM) / hw exactly
    expected = cam.maps.relu() / (h * w)
    assert (expected > 0).any()
    torch.testing.assert_close(grad.maps, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())


class TinyNet(nn.Module):
    """features (N, 3, 4, 4) → flatten → MLP: gradients vary over positions, and the score is
    piecewise linear in the features (so Y = exp(S) has the derivatives Grad-CAM++ assumes)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 4, stride=4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.features(x))


def test_layercam_and_gradcampp_match_published_formulas():
    torch.manual_seed(3)
    net = TinyNet()
    adapter = camloc.adapt(net, input_size=16)
    x = batch(16, 2, seed=4)
    features = net.features(x).detach()
    classes = net(x).argmax(dim=1)

    for n in range(2):
        activation, c = features[n], int(classes[n])

        def score(a, c=c):
            return net.head(a[None])[0, c]

        def exp_score(a, c=c):
            return score(a).exp()

        # derivatives from torch.func, not from camloc: ∂S/∂A and the diagonal of ∂ⁿY/∂Aⁿ
        grad = torch.func.grad(score)(activation)
        basis = torch.eye(activation.numel()).view(-1, *activation.shape)

        def directional(order, v, a=activation):
            f = exp_score
            for _ in range(order):
                f = (lambda g: lambda a: torch.func.jvp(g, (a,), (v,))[1])(f)
            return f(a)

        d1, d2, d3 = (torch.vmap(lambda v, o=o: directional(o, v))(basis).view_as(activation)
                      for o in (1, 2, 3))
        # LayerCAM (Jiang et al. 2021, eq. 4-5): ReLU(Σ_k ReLU(∂S/∂A_k) ⊙ A_k)
        layercam = (grad.relu() * activation).sum(0).relu()
        # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 and 10) with the real derivatives of Y
        alpha = d2 / (2 * d2 + activation.sum(dim=(1, 2), keepdim=True) * d3)
        alpha = torch.where(grad != 0, alpha, 0)
        weights = (alpha * d1.relu()).sum(dim=(1, 2))
        gradcampp = torch.einsum("k,khw->hw", weights, activation).relu()

        ours = {name: get_method(name, adapter, layer="features")(x, ClassSelection(topk=1))
                for name in ("layercam", "gradcam++")}
        assert int(ours["layercam"].classes[n, 0]) == c
        torch.testing.assert_close(ours["layercam"].maps[n, 0], layercam, rtol=1e-4, atol=1e-6)
        # the published weights carry Y = exp(S_c) as a factor, camloc drops it
        expected = gradcampp / score(activation).exp()
        assert expected.amax() > 0
        torch.testing.assert_close(ours["gradcam++"].maps[n, 0], expected, rtol=1e-4, atol=1e-6)


PEER_MODELS = ["vgg11", "mobilenet_v3_small", "resnet18", "vit_tiny_patch16_224"]


@pytest.mark.parametrize("name", PEER_MODELS)
def test_maps_match_pytorch_grad_cam(models, name):
    from pytorch_grad_cam import GradCAM as PGradCAM
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM

    adapter, size = model(models, name)
    x = batch(size, 2)
    for ours_name, peer_class in [("gradcam", PGradCAM), ("gradcam++", GradCAMPlusPlus),
                                  ("layercam", LayerCAM)]:
        with larger_logits(adapter.model, ours_name == "gradcam++"):
            compare_with_pytorch_grad_cam(adapter, x, ours_name, peer_class)


@contextmanager
def larger_logits(net: nn.Module, larger: bool):
    """Logits × 1000 for Grad-CAM++: pytorch-grad-cam adds 1e-6 to α's denominator (2g² + ...),
    which random models' gradients (g² ~ 1e-8) would drown in."""
    handle = net.register_forward_hook(lambda _m, _i, output: output * 1000) if larger else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def compare_with_pytorch_grad_cam(adapter, x, ours_name, peer_class):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    method = get_method(ours_name, adapter)
    ranks = 2 if ours_name == "gradcam" and adapter.name == "resnet18" else 1  # cost
    ours = method(x, ClassSelection(topk=ranks))
    layer = method.target
    feature_hw = ours.maps.shape[-2:]
    for rank in range(ranks):
        targets = [ClassifierOutputTarget(int(c)) for c in ours.classes[:, rank]]
        peer = peer_class(adapter.model, [adapter.module(layer.name)],
                          reshape_transform=vit_reshape if layer.is_tokens else None)
        # keep the peer's maps at feature resolution: its resize becomes the identity
        peer.get_target_width_height = lambda _x, hw=feature_hw: (hw[1], hw[0])
        try:
            theirs = torch.from_numpy(peer(input_tensor=x, targets=targets))
            captured = peer.activations_and_grads
            if ours_name == "gradcam++" and layer.is_tokens:
                # LayerNorm outputs make 2g² + ΣA·g³ cross 0 at many positions, where the
                # peer's eps decides α; compare the exact formula on the peer's own
                # activations and gradients instead (the formula itself: see above)
                theirs = scale_like_pytorch_grad_cam(
                    method.combine(captured.activations[0], captured.gradients[0]))
        finally:
            peer.activations_and_grads.release()
        mine = scale_like_pytorch_grad_cam(ours.maps[:, rank])
        assert mine.amax() > 0.99, "a map that is all zero proves nothing"
        # Grad-CAM++: the peer's eps matters where 2g² + ΣA·g³ is near 0 (~1e-4 here)
        tolerance = 1e-3 if ours_name == "gradcam++" else 1e-4
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance,
                                   msg=f"{adapter.name} {ours_name} rank {rank + 1}")


@pytest.mark.parametrize("name", PEER_MODELS)
def test_maps_match_torchcam(models, name):
    from torchcam.methods import GradCAM as TGradCAM
    from torchcam.methods import LayerCAM

    adapter, size = model(models, name)
    x = batch(size, 2)
    for ours_name, peer_class in [("gradcam", TGradCAM), ("layercam", LayerCAM)]:
        method = get_method(ours_name, adapter)
        ours = method(x, ClassSelection(topk=1))
        layer = method.target
        with peer_class(adapter.model, layer.name, input_shape=(3, size, size),
                        reshape_transform=vit_reshape if layer.is_tokens else None) as peer:
            scores = adapter.model(x)
            [theirs] = peer(class_idx=ours.classes[:, 0].tolist(), scores=scores, normalized=False)
        scale = theirs.abs().amax()
        assert scale > 0
        torch.testing.assert_close(ours.maps[:, 0], theirs, rtol=1e-4, atol=1e-5 * scale,
                                   msg=f"{name} {ours_name}")


def test_scorecam_matches_torchcam(models):
    from torchcam.methods import ScoreCAM as TScoreCAM

    adapter, size = model(models, "mobilenet_v3_small")
    x = batch(size, 2)
    # an inner stage with 48 channels (6x6): 48 masked forwards per image instead of 576
    method = get_method("scorecam", adapter, layer="features.8")
    method.batch_size = 64
    ours = method(x, ClassSelection(topk=1))
    with TScoreCAM(adapter.model, method.target.name, batch_size=64,
                   input_shape=(3, size, size)) as peer:
        with torch.no_grad():
            adapter.model(x)
        [theirs] = peer(class_idx=ours.classes[:, 0].tolist(), normalized=False)
    assert theirs.amax() > 0 and ours.maps.shape[-2:] == (6, 6)
    torch.testing.assert_close(ours.maps[:, 0], theirs, rtol=1e-4, atol=1e-5 * theirs.amax())


# --------------------------------------------------------------------------- batching


class Counter:
    def __init__(self, monkeypatch, net: nn.Module):
        self.forwards = self.backwards = 0
        self.handle = net.register_forward_pre_hook(self.forward)
        grad = torch.autograd.grad

        def counting_grad(*args, **kwargs):
            self.backwards += 1
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counting_grad)

    def forward(self, *_):
        self.forwards += 1


def test_one_forward_and_one_backward_per_rank_for_the_whole_batch(models, monkeypatch):
    adapter, size = model(models, "vgg11")
    x, selection = batch(size, 3, seed=7), ClassSelection(topk=2)
    for name in ("gradcam", "gradcam++", "layercam"):
        method = get_method(name, adapter)
        counter = Counter(monkeypatch, adapter.model)
        together = method(x, selection)
        counter.handle.remove()
        assert (counter.forwards, counter.backwards) == (1, 2), name
        # each image got its own gradient: the batch equals the images one at a time
        for i in range(3):
            alone = method(x[i : i + 1], selection)
            assert torch.equal(alone.classes[0], together.classes[i])
            torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-4,
                                       atol=1e-5 * together.maps.abs().max())


def counted_scorecam(monkeypatch, net: nn.Module, chunk: int, x: torch.Tensor, selection: ClassSelection):
    """Score-CAM on ``net``'s features in chunks of ``chunk``: ``(method, output, counter)``,
    the counter holding the forwards and backwards of that one call."""
    method = ScoreCAM(camloc.adapt(net, input_size=16), layer="features")
    method.batch_size = chunk
    counter = Counter(monkeypatch, net)
    output = method(x, selection)
    counter.handle.remove()
    return method, output, counter


def test_scorecam_forwards_are_chunked_across_channels(monkeypatch):
    torch.manual_seed(0)
    net = TinyNet()
    x = batch(16, 3, seed=2)
    method, output, counter = counted_scorecam(monkeypatch, net, 4, x, ClassSelection(topk=2))
    channels = 3
    assert counter.forwards == 1 + math.ceil(3 * channels / 4)
    assert counter.backwards == 0
    assert output.maps.shape == (3, 2, 4, 4)
    # top-2 from the same forwards equals asking for each class alone
    for rank in (1, 2):
        alone = method(x, ClassSelection(rank=rank))
        torch.testing.assert_close(alone.maps[:, 0], output.maps[:, rank - 1])


def test_scorecam_shares_one_black_image_forward_among_blank_channels(monkeypatch):
    torch.manual_seed(1)
    net = TinyNet()
    with torch.no_grad():  # channel 1 is all zero after the ReLU, for every image
        net.features[0].weight[1] = 0
        net.features[0].bias[1] = -1
    x = batch(16, 3, seed=5)
    _, output, counter = counted_scorecam(monkeypatch, net, 2, x, ClassSelection(topk=1))
    # the capture, one black image, then the 3 images x 2 non-blank channels in pairs
    # (all 9 masked images would be 1 + 5 forwards)
    assert counter.forwards == 1 + 1 + 3
    with torch.no_grad():  # Score-CAM written out: every channel's masked image forwarded
        activations = net.features(x)
        logits = net(x)
        for n in range(3):
            c = int(output.classes[n, 0])
            scores = []
            for k in range(3):
                a = activations[n, k]
                span = a.max() - a.min()
                mask = (a - a.min()) / (span + 1e-8)
                up = F.interpolate(mask[None, None], size=(16, 16), mode="bilinear", align_corners=False)
                scores.append(net(x[n : n + 1] * up)[0, c])
            weights = (torch.stack(scores) - logits[n, c]).softmax(0)
            expected = torch.einsum("k,khw->hw", weights, activations[n]).relu()
            torch.testing.assert_close(output.maps[n, 0], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- state and hooks


def test_hooks_removed_and_state_restored_also_after_an_error(models):
    torch.manual_seed(0)
    tiny = camloc.adapt(TinyNet(), input_size=16)
    cases = [(model(models, "mobilenet_v3_small"), "gradcam"), ((tiny, 16), "scorecam")]
    for (adapter, size), name in cases:
        net = adapter.model
        frozen = [p for i, p in enumerate(net.parameters()) if i % 2]
        for parameter in frozen:
            parameter.requires_grad_(False)
        flags = [p.requires_grad for p in net.parameters()]
        statistics = [b.clone() for b in net.buffers()]
        net.train()
        try:
            method = get_method(name, adapter)
            target = adapter.module(method.target.name)
            method(batch(size, 2), ClassSelection())
            assert net.training and [p.requires_grad for p in net.parameters()] == flags
            assert not target._forward_hooks and torch.is_grad_enabled()
            # eval mode during the call: BatchNorm statistics did not move
            assert all(torch.equal(a, b) for a, b in zip(statistics, net.buffers(), strict=True))
            with pytest.raises(RuntimeError):
                method(torch.randn(1, 5, size, size), ClassSelection())  # wrong channel count
            assert net.training and [p.requires_grad for p in net.parameters()] == flags
            assert not target._forward_hooks and torch.is_grad_enabled()
        finally:
            net.eval()
            for parameter in frozen:
                parameter.requires_grad_(True)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("name, layer", [
    ("vgg11", "features"), ("mobilenet_v3_small", "features"), ("resnet18", "layer4"),
    ("vit_tiny_patch16_224", "blocks.11.norm1"),
])
def test_default_layer_is_the_last_spatial_feature_layer(models, name, layer):
    adapter, _ = model(models, name)
    found = get_method("gradcam", adapter).target
    assert found.name == layer
    if name.startswith("vit"):
        # after the last attention only the class token reaches the head: the patch tokens of
        # later layers get no gradient, so their maps would be empty
        assert found == SpatialLayer(layer, prefix=1, grid=(7, 7))
        x = batch(112, 1)
        late = get_method("gradcam", adapter, layer="blocks.11")(x, ClassSelection())
        assert late.maps.abs().amax() == 0
        assert get_method("gradcam", adapter)(x, ClassSelection()).maps.amax() > 0


def test_layer_option_picks_the_layer(models):
    adapter, size = model(models, "resnet18")
    method = get_method("gradcam", adapter, layer="layer3")
    assert method.target.name == "layer3"
    assert method(batch(size, 1), ClassSelection()).maps.shape[-2:] == (size // 16, size // 16)
    # auto with a layer other than the pooled one needs a gradient method
    assert get_method("auto", adapter, layer="layer3").name == "gradcam"
    assert get_method("auto", adapter, layer=adapter.feature_layer).name == "cam"
    assert get_method("auto", adapter).name == "walkcam"  # the default localization


def test_unknown_layer_lists_close_matches(models):
    adapter, _ = model(models, "resnet18")
    with pytest.raises(ModelError, match=r"no layer named 'layer5'.*close matches: .*layer4"):
        spatial_layer(adapter, "layer5")


@pytest.mark.parametrize("layer, shape", [("fc", "(1, 1000)"), ("avgpool", "(1, 512, 1, 1)")])
def test_non_spatial_layer_is_refused(models, layer, shape):
    adapter, _ = model(models, "resnet18")
    with pytest.raises(ModelError, match=rf"'{layer}'.*outputs shape {re_escape(shape)}, not a "
                                         "spatial map"):
        get_method("layercam", adapter, layer=layer)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_plain_cam_refused_on_vgg_names_gradient_methods(models):
    adapter, _ = model(models, "vgg11")
    with pytest.raises(ModelError, match="plain CAM needs global average pooling.*gradcam"):
        get_method("cam", adapter)
    assert get_method("auto", adapter).name == "gradcam"


# --------------------------------------------------------------------------- end to end


def test_explain_with_every_method_gives_boxes_at_original_resolution(models):
    adapter, _ = model(models, "mobilenet_v3_small")
    for name in ("gradcam", "gradcam++", "layercam", "scorecam"):
        layer = "features.8" if name == "scorecam" else None  # 48 channels: 48 forwards
        [result] = camloc.explain(adapter, EXAMPLE, method=name, layer=layer, topk=2)
        assert result.method == name
        assert result.normalized.shape == (2, *reversed(result.size))
        assert result.boxes[0] and result.to_record()["method"] == name


def test_runner_auto_uses_gradcam_on_vgg(models, tmp_path):
    from camloc.jobs.local import RunOptions, run

    adapter, _ = model(models, "vgg11")
    summary = run(adapter, [EXAMPLE], RunOptions.build(out=tmp_path, topk=2))
    assert summary.done == 1
    [record] = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["method"] == "gradcam" and len(record["cams"]) == 2
    assert (tmp_path / record["outputs"]["overlay"]).is_file()


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from camloc.cli import main

    monkeypatch.setattr("sys.argv", ["camloc", *args])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err


def test_cli_run_gradcam_with_layer(monkeypatch, capsys, tmp_path):
    code, err = cli(monkeypatch, capsys, "run", EXAMPLE, "--out", str(tmp_path), "--model",
                    "resnet18", "--weights", "random", "--method", "gradcam++", "--layer",
                    "layer3", "--device", "cpu")
    assert code == 0, err
    record = json.loads((tmp_path / "results.jsonl").read_text())
    assert record["method"] == "gradcam++" and record["cams"][0]["boxes"]


@pytest.mark.parametrize("args, message", [
    (["--method", "cam"], "plain CAM needs global average pooling"),
    (["--layer", "featurez"], "no layer named 'featurez'"),
    (["--layer", "classifier"], "not a spatial map"),
])
def test_cli_errors_are_one_line(monkeypatch, capsys, tmp_path, args, message):
    code, err = cli(monkeypatch, capsys, "run", EXAMPLE, "--out", str(tmp_path), "--model",
                    "mobilenet_v3_small", "--weights", "random", "--device", "cpu", *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if "--method" in args:
        assert "gradcam" in err and "scorecam" in err


def test_gradcam_registered_by_importing_camloc():
    assert {"cam", "gradcam", "gradcam++", "layercam", "scorecam"} <= set(camloc.methods.METHODS)
    assert camloc.methods.METHODS["gradcam"] is GradCAM


def test_cli_info_shows_the_gradient_layer(monkeypatch, capsys):
    from camloc.cli import main

    monkeypatch.setattr("sys.argv", ["camloc", "info", "--model", "mobilenet_v3_small",
                                     "--weights", "random"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert "gradient layer: features" in capsys.readouterr().out


def test_the_graph_starts_at_the_target_layer_and_parameters_are_left_alone():
    adapter = camloc.load_model("resnet18", weights="random")
    net = adapter.model
    recorded = {}

    def record(name):
        def hook(_module, _inputs, output):
            recorded[name] = (output.requires_grad, all(p.requires_grad for p in net.parameters()))
        return hook

    handles = [net.layer1.register_forward_hook(record("below")), net.fc.register_forward_hook(record("above"))]
    try:
        for name in ("gradcam", "gradcam++", "layercam"):
            recorded.clear()
            output = get_method(name, adapter, "layer3")(batch(64, 2), ClassSelection(topk=2))
            assert output.maps.shape == (2, 2, 4, 4)  # layer3 at 64 pixels: stride 16
            # below the layer nothing is recorded; above it is; parameters keep requires_grad
            assert recorded == {"below": (False, True), "above": (True, True)}
    finally:
        for handle in handles:
            handle.remove()
    assert torch.is_grad_enabled()  # the caller's grad mode is back
