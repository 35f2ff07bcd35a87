"""Model adapters: the CAM identity on real and random weights, refusals, loading errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camloc
from camloc.errors import ClassError, ModelError
from camloc.methods import ClassSelection, class_maps
from camloc.models import inference_mode


def assert_cam_identity(adapter, size=None, classes=(0, 1, 7, 500, 999), batch=2, seed=0):
    """mean_xy(CAM_c) + b_c == logit_c for several classes and images."""
    size = size or adapter.input_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=generator)
    with inference_mode(adapter.model):
        logits, features = adapter.forward_with_features(images)
        chosen = torch.tensor([c % adapter.num_classes for c in classes]).expand(batch, -1)
        maps = class_maps(adapter, features, chosen)
        _, _, bias = adapter.head(features)
    rebuilt = maps.mean(dim=(2, 3)) + bias.gather(1, chosen)
    expected = logits.gather(1, chosen)
    assert maps.shape[-2:] == features.shape[-2:]
    torch.testing.assert_close(rebuilt, expected, atol=2e-4 * (1 + expected.abs().max().item()), rtol=1e-4)


def test_default_model_identity_with_real_weights(default_model):
    assert default_model.name == "efficientnet_lite0"
    assert default_model.feature_layer == "bn2"
    assert default_model.mean == (0.5, 0.5, 0.5)
    assert_cam_identity(default_model)


@pytest.mark.parametrize("name, layer, neck", [
    ("resnet50", "layer4", []),
    ("densenet121", "features", []),
    ("convnext_tiny", "features", ["layer_norm"]),
    ("efficientnet_b0", "features", []),
    ("timm/convnext_tiny", "norm_pre", ["layer_norm"]),
    ("timm/efficientnet_b0", "bn2", []),
    ("timm/resnet50", "layer4", []),
])
def test_identity_random_weights(name, layer, neck):
    adapter = camloc.load_model(name, weights="random")
    assert adapter.head_error is None
    assert adapter.feature_layer == layer
    assert [step.kind for step in adapter.neck] == neck
    assert_cam_identity(adapter, size=(160, 128))


def test_batchnorm1d_neck_is_exact():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4), nn.ReLU())
            self.norm = nn.BatchNorm1d(16)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            return self.fc(self.norm(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)))

    net = Net()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
        net.norm.weight.uniform_(0.5, 2)
        net.norm.bias.uniform_(-1, 1)
    adapter = camloc.adapt(net, input_size=64)
    assert [s.kind for s in adapter.neck] == ["batch_norm"]
    assert adapter.feature_layer == "body"
    assert_cam_identity(adapter, classes=(0, 2, 4))


@pytest.mark.parametrize("name, culprit", [("vgg11", "linear"), ("mobilenet_v3_small", "linear")])
def test_head_not_linear_after_pooling_is_refused(name, culprit):
    adapter = camloc.load_model(name, weights="random")
    assert culprit in adapter.head_error
    with pytest.raises(ModelError, match="gradient method"):
        adapter.require_cam()
    with pytest.raises(ModelError, match="not linear in the pooled features"):
        camloc.get_method("cam", adapter)


def test_relu_between_pool_and_classifier_is_named():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.ReLU(), nn.Linear(8, 3))
    adapter = camloc.adapt(net, input_size=32)
    assert "'relu'" in adapter.head_error


def test_model_state_is_restored(photos):
    net = torchvision.models.resnet18(num_classes=4)
    net.train()
    adapter = camloc.adapt(net, class_names=["a", "b", "c", "d"])
    torch.set_grad_enabled(True)
    camloc.explain(adapter, [photos["coffee"]], topk=2)
    assert net.training
    assert torch.is_grad_enabled()
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_real_photos_are_classified_right(default_model, photos):
    cat, coffee = camloc.explain(default_model, [photos["chelsea_cat"], photos["coffee"]])
    # measured: Egyptian cat 0.81, espresso 0.89 (squash to 224, TF normalisation)
    assert cat.predictions[0].label == "Egyptian cat"
    assert cat.predictions[0].score == pytest.approx(0.81, abs=0.05)
    assert {p.label for p in cat.predictions[:3]} == {"Egyptian cat", "tiger cat", "tabby"}
    assert coffee.predictions[0].label == "espresso"
    assert coffee.predictions[0].score == pytest.approx(0.89, abs=0.05)
    assert "cup" in [p.label for p in coffee.predictions[:3]]


def test_built_models_are_channels_last_and_agree_with_the_default_layout(default_model, photos):
    """The fast layout (load_model, ClassifierAdapter.to) gives the same logits, maps and boxes
    as the same weights in PyTorch's default layout."""
    stem = default_model.model.conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    plain = copy.deepcopy(default_model)
    plain.model.to(memory_format=torch.contiguous_format)
    assert plain.model.conv_stem.weight.is_contiguous()
    images = [photos["chelsea_cat"], photos["motorcycle"]]
    fast, slow = camloc.explain(default_model, images, topk=3), camloc.explain(plain, images, topk=3)
    for a, b in zip(fast, slow, strict=True):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        torch.testing.assert_close(a.maps, b.maps, atol=1e-4 * a.maps.abs().max().item(), rtol=1e-4)
        assert [len(boxes) for boxes in a.boxes] == [len(boxes) for boxes in b.boxes]
        edges_a = np.array([box for boxes in a.boxes for box in boxes])
        edges_b = np.array([box for boxes in b.boxes for box in boxes])
        assert np.abs(edges_a - edges_b).max() <= 1  # a pixel at the threshold may move an edge
    user = torchvision.models.resnet18(num_classes=3)
    adapter = camloc.load_model(user, class_names=["a", "b", "c"])
    assert user.conv1.weight.is_contiguous()  # a module you pass keeps its layout ...
    adapter.to("cpu")
    assert user.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # ... until moved


def test_local_weights_file(tmp_path):
    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    adapter = camloc.load_model("resnet18", weights=path)
    torch.testing.assert_close(adapter.model.fc.weight, net.fc.weight)
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ModelError, match="does not fit"):
        camloc.load_model("resnet18", weights=wrong)
    with pytest.raises(ModelError, match="not found"):
        camloc.load_model("resnet18", weights=tmp_path / "missing.pth")


def test_unknown_names_and_classes(default_model):
    with pytest.raises(ModelError, match="close matches: resnet50"):
        camloc.load_model("resnt50")
    with pytest.raises(ClassError, match="did you mean"):
        default_model.class_index("tabbby")
    with pytest.raises(ClassError, match="out of range"):
        default_model.class_index(1000)
    assert default_model.class_index("Tabby") == 281
    assert default_model.class_index("281") == 281
    with pytest.raises(ClassError):
        ClassSelection(topk=0)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a camloc checkpoint"):
        camloc.load_model(path)
