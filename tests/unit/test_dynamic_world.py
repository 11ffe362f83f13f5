"""Dynamic World in the engine: the port against TensorFlow's own output on a real L1C chip (a fixture the
conversion wrote; TensorFlow is not needed here), its input transform, window alignment and band matching."""
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.inference.sliding import predict_probabilities
from landcover_plugin.core.inference.windows import blend_weights
from landcover_plugin.core.model.bundled import resolve_model_path
from landcover_plugin.core.model.model_file import load_model
from landcover_plugin.core.model.predictor import Predictor
from landcover_plugin.core.segment import SegmentOptions, segment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = np.load(os.path.join(ROOT, "tests", "data", "dynamic_world", "tf_reference.npz"))
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")


@pytest.fixture(scope="module")
def dw():
    return load_model(resolve_model_path("dynamic_world"))


def probabilities(model, dn, tile, overlap):
    net, spec = model
    predictor = Predictor(net, spec.mean, spec.std, blend_weights(tile, overlap), torch.device("cpu"), 2,
                          precision="fp32")
    return predict_probabilities(predictor, dn, spec.num_classes, tile, overlap)


@pytest.mark.parametrize("tile,overlap", [(200, 88), (512, 96)])  # four windows with 22 px margins; the default
def test_tiled_probabilities_match_tensorflow_on_the_whole_chip(dw, tile, overlap):
    """Edges included: windows crossing the chip's edge (which is smaller than a tile) run on their part inside
    it, so the network pads its layers with zeros there as TensorFlow's whole-image run does (the model's
    edges "network")."""
    ours = probabilities(dw, FIXTURE["dn"], tile, overlap)
    theirs = FIXTURE["probabilities"].astype(np.float32)
    assert np.abs(ours - theirs).max() < 1e-3  # TF's output is stored as float16 (5e-4)
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.999


def test_windows_moved_inside_the_raster_score_as_the_cut_ones(dw):
    """On a raster larger than a tile, where the network is compiled for whole windows, windows crossing its edge
    are read moved inside it and run whole, in a batch: the same scores as the window cut to its part inside
    (eagerly, windows are cut: fewer pixels)."""
    dn = np.pad(FIXTURE["dn"], ((0, 0), (0, 180), (0, 100)), mode="reflect")  # 340 x 260: 4 x 3 windows
    ran = []
    net, spec = dw
    predictor = Predictor(net, spec.mean, spec.std, blend_weights(200, 88), torch.device("cpu"), 2, precision="fp32")
    inside = predictor._inside
    predictor._inside = lambda part: ran.append(part.shape) or inside(part)
    cut = predict_probabilities(predictor, dn, spec.num_classes, 200, 88)
    assert len(ran) == 11  # all but the one window inside the raster, cut
    ran.clear()
    predictor.compiled, predictor._compiled_shape = predictor.net, (2, 200, 200)  # a stand-in: no compiling here
    moved = predict_probabilities(predictor, dn, spec.num_classes, 200, 88)
    assert not ran  # every window ran whole
    assert np.abs(moved - cut).max() < 1e-4 and (moved.argmax(0) == cut.argmax(0)).mean() > 0.9999


def test_mirrored_edges_would_differ_there(dw):
    """What the edges setting buys: the same network mirrored at the edges, as the U-Nets are, differs within its
    22 px reach of them."""
    net, spec = dw
    net.edges = "mirror"
    try:
        ours = probabilities(dw, FIXTURE["dn"], 200, 88)
    finally:
        net.edges = spec.edges
    theirs = FIXTURE["probabilities"].astype(np.float32)
    assert np.abs(ours - theirs)[:, 22:-22, 22:-22].max() < 1e-3 and np.abs(ours - theirs).max() > 0.05


def test_the_input_transform_is_dynamic_worlds_normalisation(dw):
    net, spec = dw
    p = np.array([[1.7417268007636313, 2.023298706048351], [1.7261204997060209, 2.038905204308012],
                  [1.6798346251414997, 2.179592821212937], [1.7734969472909623, 2.2890068333026603],
                  [2.289154079164943, 2.6171674549378166], [2.382939712192371, 2.773418590375327],
                  [2.3828939530384052, 2.7578332604178284], [2.1952484264967844, 2.789092484314204],
                  [1.554812948247501, 2.4140534947492487]])
    dn = FIXTURE["dn"][:, :8, :8].astype(np.float64)
    x = np.exp(((np.log(dn * 0.005 + 1) - p[:, :1, None]) / p[:, 1:, None]) * 5 - 1)
    want = x / (x + 1)  # the notebook's lines, bands first
    from landcover_plugin.core.model.transforms import normalize

    got = normalize(torch.from_numpy(dn.astype(np.float32))[None], torch.tensor(spec.mean).view(1, -1, 1, 1),
                    torch.tensor(spec.std).view(1, -1, 1, 1), spec.transform)[0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert spec.bands == BANDS and spec.gsd == 10.0 and spec.alignment == 2 and spec.edges == "network"
    assert [c.name for c in spec.classes][:3] == ["water", "trees", "grass"]
    assert spec.classes[6].color.lower() == "#c4281b"


def write_stack(path, dn, descriptions=None, crs="EPSG:32643"):
    with rasterio.open(path, "w", driver="GTiff", width=dn.shape[2], height=dn.shape[1], count=len(dn),
                       dtype="uint16", crs=crs, transform=from_origin(500000, 3370000, 10, 10)) as ds:
        ds.write(dn)
        for i, d in enumerate(descriptions or (), 1):
            ds.set_band_description(i, d)
    return str(path)


def test_segment_finds_the_bands_by_name_in_any_order_and_draws_tensorflows_map(dw, tmp_path):
    """A 13-band stack in reverse order with descriptions like QGIS users have them: the engine picks the
    nine bands by name (B8A is not B8), logs how, and labels as TensorFlow does."""
    names = ["B1", "B02 (Blue)", "B03", "B04 (Red)", "B5", "B6", "B7", "B08 (NIR)", "B8A", "B9", "B10", "B11",
             "B12"]
    where = {"B2": 1, "B3": 2, "B4": 3, "B5": 4, "B6": 5, "B7": 6, "B8": 7, "B11": 11, "B12": 12}
    stack = np.zeros((13, 160, 160), np.uint16)
    stack[8] = 7  # B8A: a decoy
    for band, i in where.items():
        stack[i] = FIXTURE["dn"][BANDS.index(band)]
    order = list(range(13))[::-1]
    raster = write_stack(tmp_path / "scene.tif", stack[order], [names[i] for i in order])
    logs = []
    res = segment(raster, str(tmp_path / "classes.tif"), dw, log=logs.append,
                  options=SegmentOptions(device="cpu", precision="fp32"))
    with rasterio.open(res.class_path) as ds:
        labels = ds.read(1)
    want = FIXTURE["probabilities"].astype(np.float32).argmax(0)
    assert (labels == want).mean() >= 0.999
    assert any("Bands matched by their names" in m and "B2=band 12" in m and "B8=band 6" in m for m in logs)


@pytest.mark.parametrize("bands,message", [
    (3, "lack B5, B6, B7, B8, B11, B12"),  # an RGB raster with band names
    (4, r"4 band\(s\) without names"),
])
def test_a_raster_without_the_bands_is_refused_naming_them(dw, tmp_path, bands, message):
    dn = np.zeros((bands, 64, 64), np.uint16)
    names = ["B4", "B3", "B2"] if bands == 3 else None
    raster = write_stack(tmp_path / "x.tif", dn, names)
    with pytest.raises(InputError, match=message):
        segment(raster, str(tmp_path / "c.tif"), dw, options=SegmentOptions(device="cpu"))
    assert not os.path.exists(tmp_path / "c.tif")


def test_windows_that_would_start_on_odd_pixels_are_refused(dw, tmp_path):
    raster = write_stack(tmp_path / "x.tif", FIXTURE["dn"][:, :64, :64])
    with pytest.raises(InputError, match="multiples of 2 pixels"):
        segment(raster, str(tmp_path / "c.tif"), dw, options=SegmentOptions(device="cpu", tile_size=201,
                                                                             overlap=88))


def test_large_rasters_run_compiled_with_the_eager_probabilities(dw, tmp_path, monkeypatch):
    """auto compiles Dynamic World's fp32 network for rasters of 7 MP and more (its Mish passes fused), never the
    U-Nets, never without a compiler on every machine; the compiled network gives eager fp32's probabilities."""
    from landcover_plugin.core.model import compiled, quantize
    from landcover_plugin.core.model.precision import Hardware, decide

    net, spec = dw
    at = compiled.COMPILE_MIN_PIXELS
    cpu = Hardware("cpu", False, False, True)
    assert decide("auto", cpu, net, spec, at).compiled and "compiled" in decide("auto", cpu, net, spec, at).reason
    assert decide("fp32", cpu, net, spec, at).compiled  # asked-for fp32 is fp32 compiled alike
    assert not decide("auto", cpu, net, spec, at - 1).compiled
    assert not decide("auto", Hardware("cpu", False, False, False), net, spec, at).compiled  # a worker without g++
    assert not decide("bf16", cpu, net, spec, at).compiled
    unet, unet_spec = load_model(resolve_model_path(None))
    assert not decide("fp32", cpu, unet, unet_spec, 10 * at).compiled
    if not quantize.compiler_available():
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("LANDCOVER_CACHE_DIR", str(tmp_path))
    logs = []
    predictor = Predictor(net, spec.mean, spec.std, blend_weights(128, 60), torch.device("cpu"), 2,
                          precision="fp32", log=logs.append, compiled=True)
    assert predictor.compiled is not None and any("Compiling" in m for m in logs)
    package, ran = predictor.compiled, []
    predictor.compiled = lambda x: ran.append(tuple(x.shape)) or package(x)
    ours = predict_probabilities(predictor, FIXTURE["dn"], spec.num_classes, 128, 60)
    eager = probabilities(dw, FIXTURE["dn"], 128, 60)
    assert ran and all(s[2:] == (128, 128) for s in ran)  # the full windows ran compiled, the cut ones eagerly
    assert np.abs(ours - eager).max() < 1e-4
    assert (ours.argmax(0) == eager.argmax(0)).mean() >= 0.9999
    assert os.listdir(tmp_path / "fp32")  # kept for the next run
