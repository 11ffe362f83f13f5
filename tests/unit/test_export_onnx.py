import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import fixture_pixels, make_model

from landcover_plugin.core.model.model_file import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net, spec = make_model(tile=128, overlap=32, gsd=0.5)
    folder = tmp_path_factory.mktemp("onnx")
    model, out = folder / "m.safetensors", folder / "m.onnx"
    save_model(str(model), net, spec)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_onnx.py"), "--model", str(model),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    return net.eval(), spec, sess, meta


def deepness_feed(tiles, meta):
    """Deepness's preprocessing: /255, then standardise with the metadata."""
    mean = np.array(meta["standardization_mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(meta["standardization_std"], np.float32).reshape(1, -1, 1, 1)
    return ((np.float32(tiles * (1.0 / 255.0)) - mean) / std).astype(np.float32)


def test_onnx_carries_deepness_metadata_with_an_overlap_that_keeps_windows_in_phase(exported):
    net, spec, sess, meta = exported
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "background", "1": "building", "2": "woodland/vegetation", "3": "water",
                                   "4": "road"}
    assert meta["resolution"] == 50.0 and meta["tile_size"] == 128
    assert meta["seg_thresh"] == 0.0 and meta["seg_small_segment"] == 0
    px = export_onnx.deepness_overlap_px(128, meta["tiles_overlap"])
    # Deepness's stride on the U-Net's 4 px grid, its kept centre 24 px (our canvas pad) inside each tile
    assert (128 - px) % net.multiple == 0 and px // 2 >= 24
    smaller = export_onnx.deepness_overlap_px(128, meta["tiles_overlap"] - 1)
    assert (128 - smaller) % net.multiple or smaller // 2 < 24
    assert export_onnx.in_phase_overlap_percent(512, 16, 48) == 22  # the bundled models: 112 px, stride 400


def on_mirrored_tiles(net, spec, tiles, pad=24):
    padded = np.pad(tiles.astype(np.float32), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    with torch.no_grad():
        mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
        x = (torch.from_numpy(padded) - mean) / std
        return torch.softmax(net(x), dim=1)[:, :, pad:-pad, pad:-pad].numpy()


def test_onnx_is_the_network_on_the_tile_mirrored_at_its_edges(exported):
    net, spec, sess, meta = exported
    tiles = fixture_pixels()[:, :256, :256].reshape(3, 2, 128, 2, 128).transpose(1, 3, 0, 2, 4).reshape(4, 3, 128, 128)
    got = sess.run(None, {"input": deepness_feed(tiles, meta)})[0]
    assert got.shape == (4, 5, 128, 128)
    np.testing.assert_allclose(got, on_mirrored_tiles(net, spec, tiles), atol=1e-4)


def test_zeros_beyond_the_raster_are_seen_as_our_engine_sees_them(exported):
    """Deepness reads 0 above the raster's top and right of its right edge; our engine mirrors the raster there.
    Black columns elsewhere are data and stay."""
    net, spec, sess, meta = exported
    corner = fixture_pixels()[:, 10:50, 20:70]  # the raster's top-right 40 x 50 px
    deepness = np.zeros((1, 3, 128, 128), np.uint8)
    deepness[0, :, 88:, :50] = corner
    mirrored = np.pad(corner, ((0, 0), (88, 0), (0, 78)), mode="reflect")[None]
    black_left = mirrored.copy()
    black_left[..., :5] = 0
    got = sess.run(None, {"input": deepness_feed(np.concatenate([deepness, black_left]), meta)})[0]
    want = on_mirrored_tiles(net, spec, np.concatenate([mirrored, black_left]))
    np.testing.assert_allclose(got, want, atol=1e-4)


def deepness_map(sess, meta, image):
    """Deepness's map for an entire layer at its own resolution: tiles from the left edge and, as it extends the
    extent upwards, ending at the bottom edge; zeros beyond the raster; each tile's centre kept, edge tiles to
    their edge; argmax."""
    c, h, w = image.shape
    t = meta["tile_size"]
    o = export_onnx.deepness_overlap_px(t, meta["tiles_overlap"])
    s, half = t - o, o // 2

    def extended(n):
        return t if n <= t else n + (s - (n - t) % s) % s

    ny, nx = extended(h), extended(w)
    canvas = np.zeros((c, ny, nx), np.uint8)
    canvas[:, ny - h:, :w] = image
    out = np.zeros((ny, nx), np.uint8)
    rows, cols = (ny - t) // s + 1, (nx - t) // s + 1
    for ky in range(rows):
        for kx in range(cols):
            y, x = ky * s, kx * s
            probs = sess.run(None, {"input": deepness_feed(canvas[None, :, y:y + t, x:x + t], meta)})[0][0]
            y0, y1 = (0 if ky == 0 else half), (t if ky == rows - 1 else t - half)
            x0, x1 = (0 if kx == 0 else half), (t if kx == cols - 1 else t - half)
            out[y + y0:y + y1, x + x0:x + x1] = probs.argmax(0)[y0:y1, x0:x1]
    return out[ny - h:, :w]


def test_deepness_draws_our_map_where_the_rasters_height_keeps_the_phase(exported):
    from landcover_plugin.core.inference.sliding import predict_array
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor

    net, spec, sess, meta = exported
    image = fixture_pixels()[:, :200, :230]  # 200 rows: a multiple of the network's 4 px
    ours = predict_array(Predictor(net, spec.mean, spec.std, blend_weights(128, 32), torch.device("cpu"), 2,
                                   precision="fp32"), image, 5, 128, 32)
    assert (deepness_map(sess, meta, image) == ours).mean() > 0.995


def test_a_tile_size_for_the_rasters_height_puts_deepness_in_phase():
    for height in [300, 511, 512, 513, *range(2048, 2064)]:
        tile = export_onnx.tile_for_height(512, 16, height, 48)
        px = export_onnx.deepness_overlap_px(tile, export_onnx.in_phase_overlap_percent(tile, 16, 48))
        assert tile <= 512 and (tile - height) % 16 == 0 and (tile - px) % 16 == 0 and px // 2 >= 48
        assert tile - px >= 352  # never much more work than the default (stride 400)


def test_deepness_draws_our_map_on_any_height_with_a_file_matched_to_the_raster(exported, tmp_path):
    from landcover_plugin.core.inference.sliding import predict_array
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor

    net, spec, sess, meta = exported
    image = fixture_pixels()[:, :202, :230]  # 202 rows: out of phase by 2 px with the default file
    ours = predict_array(Predictor(net, spec.mean, spec.std, blend_weights(128, 32), torch.device("cpu"), 2,
                                   precision="fp32"), image, 5, 128, 32)
    default = (deepness_map(sess, meta, image) == ours).mean()
    out = tmp_path / "matched.onnx"
    export_onnx.export(spec_model(tmp_path, net, spec), str(out), match_height=202)
    matched = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta2 = {k: json.loads(v) for k, v in matched.get_modelmeta().custom_metadata_map.items()}
    assert meta2["tile_size"] == 126
    agreement = (deepness_map(matched, meta2, image) == ours).mean()
    assert agreement > 0.995 and agreement > default


def spec_model(folder, net, spec):
    path = str(folder / "m.safetensors")
    save_model(path, net, spec)
    return path
