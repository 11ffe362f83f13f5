#!/usr/bin/env python3
"""Export a model file to ONNX, with the metadata the Deepness QGIS plugin reads.

    python scripts/export_onnx.py [--model FILE] --out model.onnx [--tile-size N]

The ONNX model takes (N, bands, tile, tile) float32 in Deepness's convention: values
scaled to 0-1, then standardised with the `standardization_mean`/`_std` metadata
(our model's normalisation divided by 255), and returns class probabilities
(N, classes, tile, tile). Metadata: model_type, class_names, resolution (cm/px),
tile_size, tiles_overlap (percent), standardization_mean, standardization_std,
seg_thresh, seg_small_segment, and ours in full under "landcover".
"""
from __future__ import annotations

import argparse
import json

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--model", help="model file or bundled model name (default: the bundled land-cover model)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--tile-size", type=int, help="fixed input size (default: the model's tile size)")
    p.add_argument("--opset", type=int, default=17)
    return p.parse_args(argv)


def deepness_metadata(spec, tile: int) -> dict:
    """Deepness's metadata keys (JSON-encoded values) for a model spec."""
    scale = 255.0  # Deepness feeds 8-bit imagery divided by 255
    meta = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(i): c.name for i, c in enumerate(spec.classes)}),
        "tile_size": json.dumps(tile),
        "tiles_overlap": json.dumps(round(100 * spec.overlap / spec.tile_size)),
        "standardization_mean": json.dumps([m / scale for m in spec.mean]),
        "standardization_std": json.dumps([s / scale for s in spec.std]),
        "seg_thresh": json.dumps(0.0),
        "seg_small_segment": json.dumps(0),
        "landcover": json.dumps(spec.to_dict()),
    }
    if spec.gsd:  # unknown resolution: no key, so Deepness does not resample
        meta["resolution"] = json.dumps(spec.gsd * 100)
    return meta


def export(model_path, out: str, tile: int | None = None, opset: int = 17) -> str:
    import onnx
    import torch

    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.model.unet import fused_for_inference

    net, spec = load_model(resolve_model_path(model_path))
    tile = tile or spec.tile_size

    class Probabilities(torch.nn.Module):
        """Softmax over the U-Net. Deepness's input (x/255 - m/255) / (s/255) equals our (x - m) / s,
        so the network takes it as it is."""

        def __init__(self):
            super().__init__()
            self.net = fused_for_inference(net)

        def forward(self, x):
            return torch.softmax(self.net(x), dim=1)

    wrapper = Probabilities().eval()
    dummy = torch.zeros(1, spec.in_channels, tile, tile)
    import warnings

    with warnings.catch_warnings():
        # the tile size is fixed, so the U-Net's padding branch traced for it is the right one
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, dummy, out, input_names=["input"], output_names=["probabilities"],
                          dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    model = onnx.load(out)
    for key, value in deepness_metadata(spec, tile).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup()
    try:
        import onnx  # noqa: F401
    except ImportError:
        from landcover_plugin.core.errors import InputError

        raise InputError("Export needs the onnx package: python3 -m pip install onnx") from None
    print(export(args.model, args.out, args.tile_size, args.opset))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
