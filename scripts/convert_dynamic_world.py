#!/usr/bin/env python3
"""Convert Google's Dynamic World SavedModel to this plugin's model file (a one-off; needs TensorFlow).

    python scripts/convert_dynamic_world.py SAVED_MODEL_DIR --out landcover_plugin/models/dynamic_world.safetensors
        [--fixture L1C_FOLDER --fixture-out tests/data/dynamic_world]

SAVED_MODEL_DIR is the SavedModel's `forward/` folder (google/dynamicworld, model/forward).
Every variable is copied into core/model/dynamic_world.DynamicWorldNet by the role the
graph gives it; where Keras's layer numbering leaves a batch norm's place open (the last
depthwise convolution of each block or its shortcut), both are tried and the one whose
logits match TensorFlow's is kept, so the file is written only once the port is shown to
agree (max |logit difference| printed). TensorFlow is needed here only, never by the
plugin or its tests. --fixture writes a small real chip and TensorFlow's probabilities on
it, which the tests compare the engine against.
"""
from __future__ import annotations

import argparse
import itertools
import os

import numpy as np

import _common

BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")
# Dynamic World's normalisation (google/dynamicworld single_image_runner.ipynb): per band the columns
# p30 and p70 of sigmoid(5 (log(1 + 0.005 x) - p30) / p70 - 1)
PERCENTILES = ((1.7417268007636313, 2.023298706048351), (1.7261204997060209, 2.038905204308012),
               (1.6798346251414997, 2.179592821212937), (1.7734969472909623, 2.2890068333026603),
               (2.289154079164943, 2.6171674549378166), (2.382939712192371, 2.773418590375327),
               (2.3828939530384052, 2.7578332604178284), (2.1952484264967844, 2.789092484314204),
               (1.554812948247501, 2.4140534947492487))
CLASSES = (("water", "#419BDF"), ("trees", "#397D49"), ("grass", "#88B053"), ("flooded_vegetation", "#7A87C6"),
           ("crops", "#E49635"), ("shrub_and_scrub", "#DFC35A"), ("built", "#C4281B"), ("bare", "#A59B8F"),
           ("snow_and_ice", "#B39FE1"))
# (our module, TF conv, TF batch norm) in the network's order; None: the batch norm tried both ways
LAYERS = [("stem", "conv2d", "batch_normalization")]
for name, first, dw, bns, short in (("block1", 2, 1, 3, 5), ("block2", 6, 4, 10, 9), ("block3", 10, 7, 17, 13)):
    for i in range(3):
        LAYERS.append((f"{name}.main.{i}.0", f"conv2d_{first + i}", f"batch_normalization_{bns + 2 * i}"))
        LAYERS.append((f"{name}.main.{i}.1", f"depthwise_conv2d_{dw + i}",
                       f"batch_normalization_{bns + 2 * i + 1}" if i < 2 else None))
    LAYERS.append((f"{name}.shortcut", f"conv2d_{short}", None))
LAYERS += [("side.0", "conv2d_1", "batch_normalization_1"), ("side.1", "depthwise_conv2d", "batch_normalization_2")]
OPEN = {"block1": (8, 9), "block2": (15, 16), "block3": (22, 23)}  # the two batch norms each block leaves open


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("saved_model", help="the SavedModel folder (forward/)")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--fixture", help="a folder of single-band L1C files (B2.tif ...) for the test fixture")
    p.add_argument("--fixture-out", help="where the fixture goes (chip.npy, tf_probabilities.npy)")
    return p.parse_args(argv)


def tf_variables(saved_model):
    import tensorflow as tf

    model = tf.saved_model.load(saved_model)
    return model, {v.name.split(":")[0]: v.numpy() for v in model.variables}


def load_layer(state: dict, ours: str, variables: dict, conv: str, bn: str | None) -> None:
    """Copy one TF conv (and its batch norm) into `state` under our module's names."""
    import torch

    kernel = variables.get(f"{conv}/kernel")
    if kernel is None:  # depthwise (3, 3, c, 1) -> (c, 1, 3, 3)
        weight = variables[f"{conv}/depthwise_kernel"].transpose(2, 3, 0, 1)
    else:  # (kh, kw, cin, cout) -> (cout, cin, kh, kw)
        weight = kernel.transpose(3, 2, 0, 1)
    prefix = ours if bn is None and ours == "head" else f"{ours}.0"
    state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
    state[f"{prefix}.bias"] = torch.from_numpy(variables[f"{conv}/bias"])
    if bn is not None:
        for theirs, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
            state[f"{ours}.1.{name}"] = torch.from_numpy(variables[f"{bn}/{theirs}"])


def network_for(variables: dict, choice: dict):
    """The port with the open batch norms placed as `choice` says ({block: (last depthwise's, shortcut's)})."""
    from landcover_plugin.core.model.dynamic_world import DynamicWorldNet

    net = DynamicWorldNet(len(BANDS), len(CLASSES)).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}  # keeps num_batches_tracked
    for ours, conv, bn in LAYERS:
        if bn is None:
            block = ours.split(".")[0]
            bn = f"batch_normalization_{choice[block][0 if '.main.' in ours else 1]}"
        load_layer(state, ours, variables, conv, bn)
    load_layer(state, "head", variables, "conv2d_14", None)
    net.load_state_dict(state, strict=True)
    return net


def normalised(dn: np.ndarray) -> np.ndarray:
    """Dynamic World's normalisation, as its notebook computes it (float64, then float32); bands last."""
    p = np.array(PERCENTILES)
    x = np.log(dn * 0.005 + 1)
    x = (x - p[:, 0]) / p[:, 1]
    x = np.exp(x * 5 - 1)
    return (x / (x + 1)).astype(np.float32)


def matching_network(model, variables: dict, x: np.ndarray):
    """The port whose logits match TensorFlow's on x (N, H, W, 9 normalised), and the largest difference."""
    import torch

    want = model(x).numpy()
    best = None
    for picks in itertools.product((False, True), repeat=len(OPEN)):
        choice = {block: (b, a) if swap else (a, b) for (block, (a, b)), swap in zip(OPEN.items(), picks)}
        with torch.no_grad():
            got = network_for(variables, choice)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        diff = float(np.abs(got - want).max())
        if best is None or diff < best[1]:
            best = (choice, diff)
    if best[1] > 1e-4:
        raise SystemExit(f"no placement of the open batch norms reproduces TensorFlow (best {best[1]:.3g})")
    return network_for(variables, best[0]), best[1]


def spec_for():
    from landcover_plugin.core.model.classes import LandClass
    from landcover_plugin.core.model.spec import ModelSpec, PolygonDefaults

    # sigmoid(5 (y - p30) / p70 - 1) = sigmoid((y - mean) / std) with mean = p30 + p70 / 5, std = p70 / 5
    mean = tuple(p30 + p70 / 5 for p30, p70 in PERCENTILES)
    std = tuple(p70 / 5 for _, p70 in PERCENTILES)
    return ModelSpec(
        classes=tuple(LandClass(i, n, c) for i, (n, c) in enumerate(CLASSES)), bands=BANDS, mean=mean, std=std,
        architecture="dynamic_world", gsd=10.0, tile_size=512, overlap=96, alignment=2, edges="network", level="L1C",
        transform={"name": "log_sigmoid", "log_scale": 0.005}, name="Dynamic World (Sentinel-2, 10 m)",
        polygons=PolygonDefaults(None, 300.0, 5.0),
        training={"data": "Google's Dynamic World model (Brown et al. 2022, doi 10.1038/s41597-022-01307-4), "
                          "trained by its authors; converted unchanged from the TensorFlow SavedModel of "
                          "google/dynamicworld (model/forward, commit 0dd288fae5fb5291d988e5ea3c12eb91df481ec5) "
                          "by scripts/convert_dynamic_world.py",
                  "licence": "Apache-2.0 (LICENSE and NOTICE beside the model); converted from the original files",
                  "input": "Sentinel-2 Level-1C top-of-atmosphere reflectance x 10000 without the +1000 offset of "
                           "processing baseline 04.00 and later; 20 m bands resampled to 10 m",
                  "card": "dynamic_world.md",
                  # measured on the 16 shared Sentinel-2 images, bf16 autocast on an AVX512-BF16 CPU: auto keeps fp32
                  "bf16": {"agreement": 0.99067, "images": "the 16 Sentinel-2 patches and scenes of ../shared/data/"
                           "sentinel2 (2.7 MP), labels with bf16 autocast against fp32", "date": "2026-12-07"}})


def read_l1c(folder: str) -> np.ndarray:
    """(9, H, W) uint16 DN of the bands in a folder of single-band files, 20 m bands bilinear to the 10 m grid."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(os.path.join(folder, "B2.tif")) as ref:
        shape = (ref.height, ref.width)
    out = []
    for band in BANDS:
        with rasterio.open(os.path.join(folder, f"{band}.tif")) as src:
            out.append(src.read(1, out_shape=shape, resampling=Resampling.bilinear))
    return np.stack(out)


def write_fixture(model, dn: np.ndarray, folder: str) -> str:
    """The chip (9, H, W) uint16 and TensorFlow's probabilities on the whole of it (9, H, W) float16."""
    logits = model(normalised(dn.transpose(1, 2, 0).astype(np.float64))[None]).numpy()[0]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).transpose(2, 0, 1)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tf_reference.npz")
    np.savez_compressed(path, dn=dn, probabilities=probs.astype(np.float16))
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup()
    from landcover_plugin.core.model.model_file import save_model

    model, variables = tf_variables(args.saved_model)
    if args.fixture:
        dn = read_l1c(args.fixture)[:, :160, :160]
    else:
        dn = np.random.default_rng(0).integers(0, 6000, (9, 96, 96)).astype(np.uint16)
    net, diff = matching_network(model, variables, normalised(dn.transpose(1, 2, 0).astype(np.float64))[None])
    save_model(args.out, net, spec_for())
    print(f"{args.out}: logits within {diff:.2e} of TensorFlow's on a {dn.shape[1]} x {dn.shape[2]} chip")
    if args.fixture_out:
        print(write_fixture(model, dn, args.fixture_out))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
