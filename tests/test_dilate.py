"""The last stage at 2x resolution (``dilate_last_stage``): exact where it applies, refused
(model untouched) where it cannot apply, the CAM identity intact, real photos still right."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_models import assert_cam_identity
from torch import nn

import camloc
from camloc.models import dilate_last_stage, inference_mode


def features_of(adapter, size=(224, 224)):
    with inference_mode(adapter.model):
        return adapter.forward_with_features(torch.zeros(1, 3, *size))[1]


def test_resnet50_equals_torchvision_replace_stride_with_dilation():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]).eval()
    plain = torchvision.models.resnet50().eval()
    plain.load_state_dict(reference.state_dict())
    adapter = camloc.load_model(plain, dilate=True)
    assert adapter.dilated and adapter.model is plain  # asked for: the module itself is changed
    images = torch.randn(2, 3, 160, 128)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), reference(images), rtol=0, atol=0)
    assert features_of(adapter).shape[-2:] == (14, 14)
    assert_cam_identity(adapter, size=(160, 128))


def test_default_model_is_dilated_and_keeps_the_cam_identity(default_model):
    assert default_model.dilated
    assert features_of(default_model).shape[-2:] == (14, 14)
    assert_cam_identity(default_model)


def test_no_dilate_gives_the_network_as_trained():
    adapter = camloc.load_model(dilate=False)
    assert not adapter.dilated
    assert features_of(adapter).shape[-2:] == (7, 7)
    assert_cam_identity(adapter)


def test_dilation_keeps_real_photos_right(default_model, photos):
    plain = camloc.load_model(dilate=False)
    images = [photos["chelsea_cat"], photos["coffee"], photos["astronaut"]]
    dilated_top = [e.predictions[0].label for e in camloc.explain(default_model, images)]
    plain_top = [e.predictions[0].label for e in camloc.explain(plain, images)]
    assert dilated_top[:2] == ["Egyptian cat", "espresso"]
    assert dilated_top == plain_top


def test_a_users_module_is_left_alone_by_default():
    net = torchvision.models.resnet18(num_classes=3)
    adapter = camloc.load_model(net)
    assert not adapter.dilated
    assert features_of(adapter).shape[-2:] == (7, 7)
    assert dilate_last_stage(adapter) and dilate_last_stage(adapter)  # idempotent
    assert features_of(adapter).shape[-2:] == (14, 14)


@pytest.mark.parametrize("name", ["densenet121", "convnext_tiny", "inception_v3"])
def test_models_whose_last_downsampling_cannot_be_dilated_are_untouched(name):
    # densenet: an average-pooling transition; convnext: a 2x2 stride-2 convolution;
    # inception: unpadded ("valid") stride-2 convolutions and a functional max-pool
    adapter = camloc.load_model(name, weights="random", dilate=False)
    images = torch.randn(1, 3, 160, 160)
    with inference_mode(adapter.model):
        before = adapter.model(images)
    final = features_of(adapter).shape[-2:]
    assert not dilate_last_stage(adapter)
    assert not adapter.dilated
    with inference_mode(adapter.model):
        torch.testing.assert_close(adapter.model(images), before, rtol=0, atol=0)
    assert features_of(adapter).shape[-2:] == final


class AddPosition(nn.Module):
    """A fixed-size (8x8) positional term: a larger map cannot take it."""

    def __init__(self, channels: int):
        super().__init__()
        self.position = nn.Parameter(torch.randn(1, channels, 8, 8))

    def forward(self, x):
        return x + self.position


class PositionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), AddPosition(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_a_failed_dilation_is_rolled_back():
    adapter = camloc.load_model(PositionalNet(), input_size=32, class_names=list("abcd"))
    convs = [m for m in adapter.model.modules() if isinstance(m, nn.Conv2d)]
    before = [(m.stride, m.dilation, m.padding) for m in convs]
    assert not dilate_last_stage(adapter)  # the check forward fails: 16x16 + 8x8
    assert [(m.stride, m.dilation, m.padding) for m in convs] == before
    assert_cam_identity(adapter, size=(32, 32), classes=(0, 3))
