#!/usr/bin/env python3
"""Export a model file to ONNX, with the metadata the Deepness QGIS plugin reads.

    python scripts/export_onnx.py [--model FILE] --out model.onnx [--tile-size N] [--overlap-percent P]
                                  [--match-raster RASTER]

The ONNX model takes (N, bands, tile, tile) float32 in Deepness's convention: values
scaled to 0-1, then standardised with the `standardization_mean`/`_std` metadata
(our model's normalisation divided by 255), and returns class probabilities
(N, classes, tile, tile). Metadata: model_type, class_names, resolution (cm/px, only
when the model knows its ground resolution), tile_size, tiles_overlap (percent),
standardization_mean, standardization_std, seg_thresh, seg_small_segment, and ours in
full under "landcover".

So that Deepness draws the map this plugin draws:
- tiles_overlap is chosen so that Deepness's stride is a multiple of the U-Net's
  downsampling factor (its labels change when windows move by other amounts) and the
  part of each tile it keeps lies as far inside the tile as our blending's full weight;
- the network mirrors each tile's edges as our engine mirrors the raster's, and mirrors
  image into the rows and columns Deepness fills with zeros beyond the raster (top and
  right), where it would otherwise see black.
In Deepness, keep the metadata's tile size, overlap, threshold 0 and small-segment 0,
process the entire layer, and where the model has no resolution (the land-cover model)
set the processing resolution to the raster's own, so nothing is resampled.
Deepness places its tile rows from the raster's bottom edge and we from the top, so
where the raster's height is not a multiple of the downsampling factor (16 for the
bundled models) the windows are out of phase and a few percent of labels differ.
--match-raster RASTER exports for that raster's height (a tile size a few pixels
smaller, so Deepness's rows fall on our grid); rasters of the same height mod 16 share
the file.
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
    p.add_argument("--overlap-percent", type=int,
                   help="Deepness's tiles_overlap (default: the smallest that keeps windows in phase, see above)")
    p.add_argument("--match-raster", metavar="RASTER",
                   help="choose the tile size so Deepness's tiles on this raster are in phase with ours")
    p.add_argument("--opset", type=int, default=17)
    return p.parse_args(argv)


def deepness_overlap_px(tile: int, percent: int) -> int:
    """Overlap in pixels that Deepness derives from a tiles_overlap percentage."""
    return int(tile * percent / 100 * 2) // 2


def in_phase_overlap_percent(tile: int, multiple: int, keep_from_edge: int) -> int:
    """Smallest tiles_overlap (integer percent, as Deepness reads it) whose stride is a multiple of the
    network's downsampling factor and whose pasted centre starts `keep_from_edge` px inside each tile."""
    for percent in range(0, 50):
        px = deepness_overlap_px(tile, percent)
        if (tile - px) % multiple == 0 and px // 2 >= keep_from_edge:
            return percent
    raise ValueError(f"no overlap below 50% keeps {tile} px tiles in phase with a factor of {multiple}; "
                     f"choose a tile size that is a multiple of {multiple}")


def tile_for_height(tile: int, multiple: int, height: int, keep_from_edge: int) -> int:
    """A tile size <= tile that Deepness places in phase with our windows on a raster of `height` rows: it ends
    its last tile row at the bottom edge, so the size must equal the height modulo the factor. Of the four
    largest such sizes, the one whose in-phase overlap leaves the longest stride (fewest tiles)."""
    first = tile - (tile - height) % multiple
    sizes = [first - k * multiple for k in range(4) if first - k * multiple > 2 * keep_from_edge]

    def stride(size):
        try:
            return size - deepness_overlap_px(size, in_phase_overlap_percent(size, multiple, keep_from_edge))
        except ValueError:
            return 0

    best = max(sizes, key=stride, default=None)
    if best is None or stride(best) == 0:
        raise ValueError(f"no tile size up to {tile} px keeps Deepness in phase on a raster of {height} rows")
    return best


def raster_height(path: str) -> int:
    import rasterio

    from landcover_plugin.core.errors import InputError

    try:
        with rasterio.open(path) as src:
            return src.height
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"--match-raster: cannot read {path} as a raster ({e})") from None


def deepness_metadata(spec, tile: int, overlap_percent: int) -> dict:
    """Deepness's metadata keys (JSON-encoded values) for a model spec."""
    scale = 255.0  # Deepness feeds 8-bit imagery divided by 255
    meta = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(i): c.name for i, c in enumerate(spec.classes)}),
        "tile_size": json.dumps(tile),
        "tiles_overlap": json.dumps(overlap_percent),
        "standardization_mean": json.dumps([m / scale for m in spec.mean]),
        "standardization_std": json.dumps([s / scale for s in spec.std]),
        "seg_thresh": json.dumps(0.0),
        "seg_small_segment": json.dumps(0),
        "landcover": json.dumps(spec.to_dict()),
    }
    if spec.gsd:  # unknown resolution: no key, so Deepness does not resample
        meta["resolution"] = json.dumps(spec.gsd * 100)
    return meta


def export(model_path, out: str, tile: int | None = None, opset: int = 17, overlap_percent: int | None = None,
           match_height: int | None = None) -> str:
    import onnx
    import torch
    from deepness_tile import DeepnessTile, edge_pad

    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.model.unet import fused_for_inference

    net, spec = load_model(resolve_model_path(model_path))
    tile = tile or spec.tile_size
    multiple = getattr(net, "multiple", 1)
    pad = edge_pad(spec.overlap, multiple)
    if match_height:
        tile = tile_for_height(tile, multiple, match_height, pad)
    if overlap_percent is None:
        overlap_percent = in_phase_overlap_percent(tile, multiple, pad)
    wrapper = DeepnessTile(fused_for_inference(net), spec, tile, pad).eval()
    dummy = torch.zeros(2, spec.in_channels, tile, tile)
    import warnings

    with warnings.catch_warnings():
        # the tile size is fixed, so the U-Net's padding branch traced for it is the right one
        warnings.simplefilter("ignore")  # tracer and legacy-exporter notices, not faults of this model
        torch.onnx.export(wrapper, dummy, out, input_names=["input"], output_names=["probabilities"],
                          dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    model = onnx.load(out)
    for key, value in deepness_metadata(spec, tile, overlap_percent).items():
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
    height = raster_height(args.match_raster) if args.match_raster else None
    print(export(args.model, args.out, args.tile_size, args.opset, args.overlap_percent, height))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
