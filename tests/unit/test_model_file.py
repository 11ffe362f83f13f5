import json
import os
import pickle
import struct

import pytest
import torch
from conftest import make_model

from landcover_plugin.core.errors import ModelFileError
from landcover_plugin.core.model.bundled import resolve_model_path
from landcover_plugin.core.model.model_file import METADATA_KEY, load_model, read_spec, save_model
from landcover_plugin.core.model.spec import ModelSpec


def _safetensors_with(path, state, metadata):
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    return str(path)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    net, spec = make_model()
    spec = spec.with_training(epochs=3, val_miou=0.5)
    path = str(tmp_path / "m.safetensors")
    save_model(path, net, spec)
    net2, spec2 = load_model(path)
    assert spec2 == spec
    assert spec2.to_dict()["training"] == {"epochs": 3, "val_miou": 0.5}
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net2(x))
    assert not any(f.startswith(".") or "tmp" in f for f in os.listdir(tmp_path) if f != "m.safetensors")


def test_metadata_has_the_design_fields(tmp_path):
    net, spec = make_model(gsd=0.5)
    path = str(tmp_path / "m.safetensors")
    save_model(path, net, spec)
    doc = read_spec(path).to_dict()
    for key in ("format_version", "architecture", "classes", "input", "gsd", "tile_size", "overlap", "training"):
        assert key in doc
    assert doc["gsd"] == 0.5 and doc["classes"][1]["name"] == "building"
    assert set(doc["input"]) == {"bands", "mean", "std", "transform"}
    assert doc["input"]["transform"] == {"name": "standardize"} and doc["alignment"] == 1


class _Evil:
    target = None

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_is_refused_and_never_runs(tmp_path):
    victim = tmp_path / "pwned.txt"
    _Evil.target = str(victim)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(str(path))
    assert not victim.exists()


def test_torch_checkpoint_is_refused(tmp_path):
    net, _ = make_model(calibrate=False)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ModelFileError, match="pickle or PyTorch checkpoint"):
        load_model(str(path))


def test_a_header_length_starting_like_a_pickle_is_still_safetensors(tmp_path):
    # The first byte of a safetensors file is the low byte of its header length: 0x80 for
    # 1 in 256 files, the byte a pickle starts with.
    net, spec = make_model(calibrate=False)
    path = str(tmp_path / "m.safetensors")
    for pad in range(256):
        save_model(path, net, spec.with_training(note="x" * pad))
        with open(path, "rb") as fh:
            if fh.read(1) == b"\x80":
                break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    _, loaded = load_model(path)
    assert loaded == spec.with_training(note="x" * pad)


@pytest.mark.parametrize("content", [b"", b"abc", os.urandom(4096), struct.pack("<Q", 10) + b"not json!!"])
def test_random_bytes_are_refused(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(str(path))


def test_safetensors_without_our_metadata(tmp_path):
    path = _safetensors_with(tmp_path / "x.safetensors", {"w": torch.zeros(2)}, None)
    with pytest.raises(ModelFileError, match="not a land-cover model"):
        load_model(path)


def test_metadata_that_is_not_json(tmp_path):
    path = _safetensors_with(tmp_path / "x.safetensors", {"w": torch.zeros(2)}, {METADATA_KEY: "{oops"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)


def _doc_with(**changes):
    _, spec = make_model(calibrate=False)
    doc = spec.to_dict()
    for key, value in changes.items():
        doc[key] = value
    return doc


@pytest.mark.parametrize("change,message", [
    (dict(format_version=99), "update the plugin"),
    (dict(format_version=None), "format_version"),
    (dict(architecture={"name": "resnet"}), "unknown architecture"),
    (dict(classes=[{"name": "a", "color": "#000000"}] * 5), "no valid id"),
    (dict(classes=[{"id": i, "name": f"c{i}"} for i in range(5)]), "no valid color"),
    (dict(classes=[{"id": 0, "name": "x", "color": "#000000"}] * 5), "appears twice"),
    (dict(classes=[{"id": 0, "name": "x", "color": "#000000"}]), "declares 5 classes"),
    (dict(input={"bands": [1, 2, 3], "mean": [0, 0], "std": [1, 1, 1]}), "input.mean"),
    (dict(input={"bands": [1, 2, 3], "mean": [0, 0, 0], "std": [1, 0, 1]}), "std"),
    (dict(tile_size=2), "tile_size"),
    (dict(overlap=100), "overlap"),
    (dict(gsd=-1), "gsd"),
])
def test_bad_metadata_is_named(tmp_path, change, message):
    doc = _doc_with(**change)
    path = _safetensors_with(tmp_path / "x.safetensors", {"w": torch.zeros(2)}, {METADATA_KEY: json.dumps(doc)})
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_weights_that_do_not_match_the_architecture(tmp_path):
    net, spec = make_model(calibrate=False)
    doc = spec.to_dict()
    doc["architecture"]["base_width"] = 16
    path = _safetensors_with(tmp_path / "x.safetensors", dict(net.state_dict()), {METADATA_KEY: json.dumps(doc)})
    with pytest.raises(ModelFileError, match="do not match its declared architecture"):
        load_model(path)
    state = dict(net.state_dict())
    state.pop("head.bias")
    path = _safetensors_with(tmp_path / "y.safetensors", state, {METADATA_KEY: json.dumps(spec.to_dict())})
    with pytest.raises(ModelFileError, match="missing"):
        load_model(path)


def test_errors_are_one_sentence(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ModelFileError) as info:
        load_model(str(path))
    text = str(info.value)
    assert "\n" not in text and text.endswith(".")


def test_missing_model_file_and_default(tmp_path, monkeypatch):
    from landcover_plugin.core.model import bundled

    with pytest.raises(ModelFileError, match="does not exist, and no bundled model has that name"):
        resolve_model_path("/nonexistent/m.safetensors")
    monkeypatch.setattr(bundled, "MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelFileError, match="No bundled default model is installed"):
        resolve_model_path(None)
    net, spec = make_model(base_width=4, depth=2, tile=64, overlap=8)
    save_model(str(tmp_path / bundled.DEFAULT_MODEL_NAME), net, spec)
    assert resolve_model_path(None) == str(tmp_path / bundled.DEFAULT_MODEL_NAME)
    assert resolve_model_path("") == resolve_model_path(None)
    assert resolve_model_path(str(tmp_path / bundled.DEFAULT_MODEL_NAME)) == str(tmp_path / bundled.DEFAULT_MODEL_NAME)


def test_spec_from_dict_round_trip():
    _, spec = make_model(calibrate=False)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_half_weights_keep_batchnorm_statistics_and_large_values_in_float32(tmp_path):
    from safetensors.torch import load_file

    net, spec = make_model()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = 150000.0  # seen in a real decoder; float16 would make it infinite
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 70000.0
    path = str(tmp_path / "h.safetensors")
    save_model(path, net, spec, half=True)
    stored = load_file(path)
    assert stored["stem.0.weight"].dtype == torch.float32  # out of float16's range: kept whole
    assert all(v.dtype == torch.float32 for k, v in stored.items() if k.endswith(("running_mean", "running_var")))
    assert sum(v.dtype == torch.float16 for v in stored.values()) >= len(stored) // 3
    assert os.path.getsize(path) < 0.6 * sum(v.numel() * 4 for v in stored.values())
    net2, _ = load_model(path)
    assert float(next(m for m in net2.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0]) == 150000.0
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        a, b = net.eval()(x), net2(x)
    assert torch.isfinite(b).all() and (a.argmax(1) == b.argmax(1)).float().mean() > 0.99


def test_infinite_or_nan_weights_are_refused(tmp_path):
    from safetensors.torch import load_file

    net, spec = make_model()
    path = str(tmp_path / "m.safetensors")
    save_model(path, net, spec)
    state = load_file(path)
    key = next(k for k in state if k.endswith("running_var"))
    state[key][3] = float("inf")
    bad = _safetensors_with(tmp_path / "inf.safetensors", state, {METADATA_KEY: json.dumps(spec.to_dict())})
    with pytest.raises(ModelFileError, match="infinite or NaN.*damaged"):
        load_model(bad)


def test_bundled_default_model_is_valid_and_small():
    """The shipped default: under 20 MB, its checksum verified on load, DESIGN's five classes on bands 1-3, and
    classes that beat the majority class on the committed crop (a random or broken network does not)."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.model.bundled import default_model_path
    from landcover_plugin.core.model.model_file import DIGEST_KEY, _read_header

    path = default_model_path()
    assert os.path.getsize(path) < 20 * 1024 * 1024
    assert len(_read_header(path)[0]["__metadata__"][DIGEST_KEY]) == 64
    net, spec = load_model(path)
    assert [c.name for c in spec.classes] == ["background", "building", "woodland/vegetation", "water", "road"]
    assert spec.bands == (1, 2, 3)
    data = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
    with rasterio.open(os.path.join(data, "dubai_tile7_005_crop.tif")) as ds:
        image = ds.read(window=((0, 512), (0, 512))).astype(np.float32)
    with rasterio.open(os.path.join(data, "dubai_tile7_005_crop_mask.png")) as ds:
        mask = ds.read(1, window=((0, 512), (0, 512)))
    x = (torch.from_numpy(image) - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    with torch.no_grad():
        labels = net(x[None]).argmax(1)[0].numpy()
    valid = mask != 255
    majority = np.bincount(mask[valid]).max() / valid.sum()  # 0.38
    assert (labels[valid] == mask[valid]).mean() > majority + 0.15  # 0.61 when written


def test_int8_storage_keeps_the_large_convolutions_in_8_bits_and_loads_them_as_float32(tmp_path):
    """How the bundled models ship: the deep, wide convolutions as int8 on the grid int8 inference uses (a
    scale per output channel, each weight within half a step of its value, each channel's peak exact), the
    small ones and the transposed convolutions in float16, at about 0.65 of float16's size."""
    from safetensors.torch import load_file

    from landcover_plugin.core.model.weights import INT8_MIN_WEIGHTS, INT8_PEAK_SUFFIX, INT8_SCALE_SUFFIX

    net, spec = make_model(base_width=32, depth=4, calibrate=False)  # the bundled models' shape
    half, compact = str(tmp_path / "h.safetensors"), str(tmp_path / "c.safetensors")
    save_model(half, net, spec, half=True)
    save_model(compact, net, spec, storage="int8")
    assert os.path.getsize(compact) < 0.7 * os.path.getsize(half)
    stored = load_file(compact)
    transposed = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    big = [k for k, v in net.state_dict().items() if v.ndim == 4 and v.numel() >= INT8_MIN_WEIGHTS
           and k not in transposed]
    assert big and all(stored[k].dtype == torch.int8 and k + INT8_SCALE_SUFFIX in stored for k in big)
    assert stored["stem.0.weight"].dtype == torch.float16 and stored["ups.0.up.weight"].dtype == torch.float16
    loaded, _ = load_model(compact)
    original, back = net.state_dict(), loaded.state_dict()
    for k in big:
        step = stored[k + INT8_SCALE_SUFFIX].view(-1, 1, 1, 1)
        assert back[k].dtype == torch.float32 and ((back[k] - original[k]).abs() <= step / 2 + 1e-7).all(), k
        peaks = original[k].reshape(len(step), -1).abs().amax(1)
        assert torch.equal(back[k].reshape(len(step), -1).abs().amax(1), peaks)
        assert torch.allclose(stored[k + INT8_PEAK_SUFFIX].abs(), peaks) and torch.allclose(step.flatten(),
                                                                                             peaks / 127.5)
    assert torch.equal(back["stem.0.weight"], original["stem.0.weight"].half().float())
    with pytest.raises(ModelFileError, match="Unknown weight storage"):
        save_model(str(tmp_path / "x.safetensors"), net, spec, storage="int4")


def test_an_8_bit_weight_whose_scales_do_not_fit_is_refused_as_damage(tmp_path):
    from safetensors.torch import load_file

    from landcover_plugin.core.model.weights import INT8_SCALE_SUFFIX

    net, spec = make_model(base_width=32, depth=4, calibrate=False)
    path = str(tmp_path / "c.safetensors")
    save_model(path, net, spec, storage="int8")
    state = load_file(path)
    key = next(k for k in state if k.endswith(INT8_SCALE_SUFFIX))
    meta = {METADATA_KEY: json.dumps(spec.to_dict())}
    for broken in ({**state, key: state[key][:-1].clone()}, {**state, key + "x": state[key].clone()},
                   {**state, key[:-len(INT8_SCALE_SUFFIX)]: state[key[:-len(INT8_SCALE_SUFFIX)]].float()}):
        with pytest.raises(ModelFileError):
            load_model(_safetensors_with(tmp_path / "bad.safetensors", broken, meta))
