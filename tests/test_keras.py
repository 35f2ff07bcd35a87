"""Keras 3 models (PyTorch backend) through camloc: head found, exact CAMs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import camloc
from camloc.errors import ModelError
from camloc.methods import class_maps, get_method
from camloc.models.keras import import_keras

IMAGES = Path(__file__).resolve().parent.parent / "examples" / "images"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
keras = import_keras()  # sets KERAS_BACKEND=torch before Keras is first imported


def small_net(head: str = "dense", data_format: str = "channels_last", classes: int = 5):
    """Conv stack → GAP → Dropout → Dense, with a few head variants."""
    shape = (40, 48, 3) if data_format == "channels_last" else (3, 40, 48)
    conv = dict(data_format=data_format, padding="same")
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_a", **conv)(inputs)
    x = keras.layers.BatchNormalization(axis=-1 if data_format == "channels_last" else 1)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_b", **conv)(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="gap")(x)
    x = keras.layers.Dropout(0.3)(x)
    if head == "neck":  # affine steps after pooling: still exact, with per-sample constants
        x = keras.layers.LayerNormalization(name="ln")(x)
        x = keras.layers.BatchNormalization(name="bn_head")(x)
    if head == "softmax":
        outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif head == "activation_layer":
        x = keras.layers.Dense(classes, name="scores")(x)
        outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    else:
        outputs = keras.layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=f"small_{head}")
    for layer in model.layers:  # non-trivial BN statistics and bias, so mistakes show
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.2, 0.3, size).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, size).astype("float32"))
            layer.gamma.assign(np.linspace(0.5, 1.5, size).astype("float32"))
        if isinstance(layer, keras.layers.Dense):
            layer.bias.assign(np.linspace(-1, 1, classes).astype("float32"))
    return model


def keras_output(model, batch: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The Keras model's own output for camloc's NCHW batch."""
    array = batch.permute(0, 2, 3, 1).numpy() if channels_last else batch.numpy()
    return torch.as_tensor(np.asarray(model.predict(array, verbose=0)))


def check_identity(adapter, batch: torch.Tensor, logits_expected: torch.Tensor) -> None:
    """camloc's logits equal the expected ones, and mean_xy(CAM_c) + b_c == logit_c."""
    with torch.no_grad():
        logits, features = adapter.forward_with_features(batch)
        every_class = torch.arange(adapter.num_classes).expand(len(batch), -1)
        maps = class_maps(adapter, features, every_class)
        _, _, bias = adapter.head(features)
    scale = 1 + logits_expected.abs().max().item()
    torch.testing.assert_close(logits, logits_expected, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + bias, logits_expected,
                               atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_custom_gap_dense_net_gives_exact_cams(tmp_path, suffix):
    model = small_net("dense")
    path = tmp_path / f"net{suffix}"
    model.save(path)
    adapter = camloc.load_model(path, preprocess="tf")
    assert adapter.feature_layer == "conv_b"
    assert adapter.input_size == (40, 48)
    assert tuple(adapter.weight.shape) == (5, 16)
    assert adapter.mean == adapter.std == (0.5, 0.5, 0.5)
    batch = torch.randn(3, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    check_identity(adapter, batch, keras_output(model, batch))


@pytest.mark.parametrize("head", ["softmax", "activation_layer"])
def test_softmax_heads_give_the_logits_behind_the_probabilities(tmp_path, head):
    model = small_net(head)
    model.save(tmp_path / "net.keras")
    adapter = camloc.load_model(tmp_path / "net.keras", preprocess="none")
    batch = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(2)) * 50
    with torch.no_grad():
        logits, _ = adapter.forward_with_features(batch)
    probabilities = keras_output(model, batch)
    torch.testing.assert_close(logits.softmax(dim=1), probabilities, atol=1e-5, rtol=1e-4)
    dense = model.get_layer("predictions" if head == "softmax" else "scores")
    features = keras.Model(model.inputs, model.get_layer("conv_b").output).predict(
        batch.permute(0, 2, 3, 1).numpy(), verbose=0)
    pooled_logits = features.mean(axis=(1, 2)) @ keras.ops.convert_to_numpy(dense.kernel)
    pooled_logits += keras.ops.convert_to_numpy(dense.bias)
    check_identity(adapter, batch, torch.as_tensor(pooled_logits))


def test_normalisation_after_pooling_stays_exact(tmp_path):
    model = small_net("neck")
    model.save(tmp_path / "neck.keras")
    adapter = camloc.load_model(tmp_path / "neck.keras", preprocess="tf")
    assert [step.kind for step in adapter.neck] == ["batch_norm", "layer_norm"]
    batch = torch.randn(3, 3, 40, 48, generator=torch.Generator().manual_seed(5))
    check_identity(adapter, batch, keras_output(model, batch))


def test_channels_first_model(tmp_path):
    model = small_net("dense", data_format="channels_first")
    model.save(tmp_path / "cf.keras")
    adapter = camloc.load_model(tmp_path / "cf.keras", preprocess="torch")
    assert not adapter.channels_last and adapter.input_size == (40, 48)
    batch = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    check_identity(adapter, batch, keras_output(model, batch, channels_last=False))


def test_keras_applications_resnet50(tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=12,
                                        classifier_activation=None)
    path = tmp_path / "resnet50.keras"
    model.save(path)
    adapter = camloc.load_model(path)
    assert adapter.feature_layer == "conv5_block3_out"
    assert tuple(adapter.weight.shape) == (12, 2048)
    assert adapter.bgr and "caffe" in adapter.source  # keras.applications' resnet convention
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    check_identity(adapter, batch, keras_output_caffe(model, batch, adapter))


def keras_output_caffe(model, batch: torch.Tensor, adapter) -> torch.Tensor:
    """What Keras computes on the same pixels with its own ``preprocess_input``."""
    mean = torch.tensor(adapter.mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.std).view(1, 3, 1, 1)
    pixels = (batch * std + mean) * 255  # back to RGB 0..255
    keras_input = keras.applications.resnet50.preprocess_input(
        pixels.permute(0, 2, 3, 1).numpy().copy())
    return torch.as_tensor(np.asarray(model.predict(keras_input, verbose=0)))


@pytest.mark.parametrize("preprocess, keras_function", [
    ("caffe", "resnet50"), ("tf", "mobilenet_v2"), ("torch", "densenet")])
def test_preprocessing_matches_keras_preprocess_input(tmp_path, preprocess, keras_function):
    model = small_net("dense")
    model.save(tmp_path / "net.keras")
    adapter = camloc.load_model(tmp_path / "net.keras", preprocess=preprocess)
    image = camloc.load_image(str(IMAGES / "chelsea_cat.jpg"))
    batch, _ = camloc.preprocess(image, adapter.input_size, "squash", adapter.mean, adapter.std)
    pixels = np.asarray(image.resize((48, 40), resample=2), dtype=np.float32)[None]
    reference = getattr(keras.applications, keras_function).preprocess_input(pixels.copy())
    with torch.no_grad():
        logits, _ = adapter.forward_with_features(batch[None])
    expected = torch.as_tensor(np.asarray(model.predict(reference, verbose=0)))
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)


def test_head_without_gap_dense_is_refused_naming_layers(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_only")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(3, name="fc2")(x)
    keras.Model(inputs, outputs).save(tmp_path / "flat.keras")
    with pytest.raises(ModelError) as error:
        camloc.load_model(tmp_path / "flat.keras")
    message = str(error.value)
    assert "GlobalAveragePooling2D" in message and "'fc1'" in message
    for name in ("conv_only (Conv2D)", "flat (Flatten)", "fc1 (Dense)", "fc2 (Dense)"):
        assert name in message


def test_nonlinear_step_after_pooling_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    keras.Model(inputs, outputs).save(tmp_path / "mlp.keras")
    with pytest.raises(ModelError, match=r"Dense 'out' is fed by Dense 'hidden'.*pool \("):
        camloc.load_model(tmp_path / "mlp.keras")


def test_unreadable_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a keras archive")
    with pytest.raises(ModelError, match="cannot load Keras model"):
        camloc.load_model(bad)


def test_sidecar_metadata_gives_class_names_and_preprocessing(tmp_path):
    small_net("dense", classes=3).save(tmp_path / "pets.keras")
    (tmp_path / "pets.keras.json").write_text(json.dumps(
        {"class_names": ["cat", "dog", "bird"], "preprocess": "caffe"}))
    adapter = camloc.load_model(tmp_path / "pets.keras")
    assert adapter.class_names == ["cat", "dog", "bird"] and adapter.bgr
    assert adapter.class_index("Dog") == 1


def test_explain_and_cli_run_with_a_keras_model(tmp_path):
    from typer.testing import CliRunner

    from camloc.cli import app

    small_net("dense").save(tmp_path / "net.keras")
    adapter = camloc.load_model(tmp_path / "net.keras", preprocess="tf")
    assert get_method("auto", adapter).name == "cam"
    [result] = camloc.explain(adapter, str(IMAGES / "coffee.jpg"), topk=2)
    assert result.maps.shape == (2, 400, 600) and len(result.boxes) == 2
    out = tmp_path / "out"
    arguments = ["run", str(IMAGES / "coffee.jpg"), "--model", str(tmp_path / "net.keras"),
                 "--preprocess", "tf", "-o", str(out), "--device", "cpu"]
    run = CliRunner().invoke(app, arguments)
    assert run.exit_code == 0, run.output
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["error"] is None and record["cams"][0]["boxes"]
    assert record["cams"][0]["index"] == result.targets[0].index
    assert (out / "coffee_overlay.png").is_file()
