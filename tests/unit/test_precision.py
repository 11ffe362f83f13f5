"""Precision choice (auto, fp32, bf16, int8, fp16) and int8 inference calibrated on the model file's windows."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from conftest import load_script, write_raster

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.model import device as device_mod
from landcover_plugin.core.model import precision as precision_mod
from landcover_plugin.core.model import quantize
from landcover_plugin.core.model.model_file import CALIBRATION_KEY, load_model, save_model
from landcover_plugin.core.segment import SegmentOptions, segment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROP = os.path.join(ROOT, "tests", "data", "dubai_tile7_005_crop.tif")
CROP_MASK = os.path.join(ROOT, "tests", "data", "dubai_tile7_005_crop_mask.png")
CPU = torch.device("cpu")
MODEL = os.path.join(ROOT, "landcover_plugin", "models", "landcover_default.safetensors")


@pytest.fixture
def cpu(monkeypatch):
    """A CPU whose bf16 kernels can be switched on and off."""
    state = {"bf16": False}
    monkeypatch.setattr(device_mod, "cpu_has_bf16", lambda: state["bf16"])
    return state


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """int8 packages in a folder of the test session's, not the user's cache."""
    folder = tmp_path_factory.getbasetemp() / "landcover-cache"
    monkeypatch.setenv("LANDCOVER_CACHE_DIR", str(folder))
    return folder


def test_auto_on_a_cpu_picks_int8_where_it_pays_else_bf16_where_the_cpu_has_it(cpu):
    choose = device_mod.choose_precision
    assert choose(CPU, "auto", int8_pays=True) == "int8"
    assert choose(CPU, "auto") == "fp32"
    cpu["bf16"] = True
    assert choose(CPU, "auto") == "bf16"
    for forced in ("fp32", "bf16", "int8"):
        assert choose(CPU, forced) == forced


def test_auto_uses_int8_only_for_models_that_record_faithful_int8_labels():
    from landcover_plugin.core.model.model_file import read_spec

    models = os.path.join(ROOT, "landcover_plugin", "models")
    assert quantize.faithful(read_spec(os.path.join(models, "landcover_default.safetensors")))
    buildings = read_spec(os.path.join(models, "buildings_osm.safetensors"))
    assert buildings.training["int8"]["agreement"] < quantize.INT8_MIN_AGREEMENT and not quantize.faithful(buildings)
    unmeasured = buildings.with_training(int8=None)
    assert not quantize.faithful(unmeasured)
    # an agreement measured with another quantization does not vouch for the one that runs now
    record = read_spec(os.path.join(models, "landcover_default.safetensors")).training["int8"]
    assert not quantize.faithful(buildings.with_training(int8={**record, "scheme": "every layer int8"}))
    assert quantize.faithful(buildings.with_training(int8=record))


def test_auto_decides_int8_from_a_few_megapixels_whether_or_not_a_package_is_cached_and_not_beside_bf16(cache):
    """The same raster and model give the same precision on every run: a package compiled by an earlier run
    never turns int8 on (it once did, so a second run drew another map than the first)."""
    net, spec = load_model(MODEL)
    shape = (2, 3, 512, 512)
    at = quantize.INT8_MIN_PIXELS

    def chosen(pixels, bf16=False, int8=True):
        return precision_mod.decide("auto", precision_mod.Hardware("cpu", bf16, int8), net, spec, pixels)

    assert chosen(at).precision == "int8" and "99.5" in chosen(at).why and "2 MP" in chosen(at).why
    assert chosen(at - 1).precision == "fp32" and "under the 2 MP" in chosen(at - 1).why
    assert chosen(10 * at, bf16=True).precision == "bf16"  # bf16 kernels run as fast, with nothing to compile
    assert chosen(10 * at, int8=False).precision == "fp32" and "torchao" in chosen(10 * at, int8=False).why
    path = quantize.package_path(net, spec.mean, spec.std, shape)
    assert path.startswith(str(cache)) and path != quantize.package_path(net, spec.mean, spec.std, (4, 3, 512, 512))
    cold = [chosen(p) for p in (at - 1, at, 40 * at)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()  # as if compiled by an earlier run
    try:
        assert [chosen(p) for p in (at - 1, at, 40 * at)] == cold
    finally:
        os.remove(path)
    assert precision_mod.decide("bf16", precision_mod.Hardware("cpu", False, True), net, spec, at).why == "asked for"
    unmeasured = spec.with_training(int8=None)
    assert precision_mod.decide("auto", precision_mod.Hardware("cpu", False, True), net, unmeasured, at).precision \
        == "fp32"
    # other weights, other package
    with torch.no_grad():
        next(net.parameters()).add_(1)
    assert quantize.package_path(net, spec.mean, spec.std, shape) != path


def test_a_cluster_decides_for_what_all_its_workers_have():
    Hardware = precision_mod.Hardware
    net, spec = load_model(MODEL)
    cpus = Hardware.common([Hardware("cpu", False, True), Hardware("cpu", True, True)])
    assert cpus == Hardware("cpu", False, True)  # one worker without bf16 kernels: none is assumed
    mixed = Hardware.common([Hardware("cuda", True, False), Hardware("cpu", True, True)])
    assert mixed.kind == "mixed" and precision_mod.decide("auto", mixed, net, spec, 10 ** 8).precision == "fp32"
    gpus = Hardware.common([Hardware("cuda", True, False), Hardware("cuda", False, False)])
    assert precision_mod.decide("auto", gpus, net, spec, 10 ** 8).precision == "fp16"
    assert precision_mod.decide("bf16", gpus, net, spec, 10 ** 8).precision == "fp16"  # one GPU lacks bf16
    with pytest.raises(InputError, match="int8 runs on CPUs only"):
        precision_mod.decide("int8", gpus, net, spec, 10 ** 8)


def test_auto_on_a_gpu_is_fp16_and_each_precision_runs_where_it_can(monkeypatch):
    gpu = torch.device("cuda")  # a device object only: no GPU is used
    choose = device_mod.choose_precision
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose(gpu, "auto") == "fp16"  # three more bits than bf16, and faster on an H100
    assert [choose(gpu, p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose(gpu, "bf16") == "fp16"
    with pytest.raises(InputError, match="int8 runs on CPUs only"):
        choose(gpu, "int8")
    with pytest.raises(InputError, match="fp16 runs on GPUs only"):
        choose(CPU, "fp16")
    assert device_mod.amp_dtype(gpu, "auto") == torch.float16


def test_int8_keeps_the_stem_and_first_down_block_in_floating_point_and_upsamples_in_int8():
    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    from landcover_plugin.core.model.unet import fused_for_inference

    net, spec = load_model(MODEL)
    converted = quantize.quantized(fused_for_inference(net), net.calibration_windows[:4, :, :64, :64], spec.mean,
                                   spec.std)
    weights = {}  # convolution -> whether its weights arrive dequantized from int8
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default:
            name = list(node.meta["nn_module_stack"].values())[-1][0]
            weights[name] = "dequantize" in str(getattr(node.args[1], "target", ""))
    kept = sorted(n for n, int8 in weights.items() if not int8)
    assert kept == ["downs.0.1.0", "downs.0.1.3", "stem.0", "stem.3"]
    assert len(weights) - len(kept) == 19 and weights["head"] and weights["downs.1.1.0"]
    # the decoder's transposed convolutions, as 1 x 1 convolutions, run in int8 too
    assert all(weights[f"ups.{i}.up.conv"] for i in range(4))


def test_bf16_keeps_the_second_down_blocks_first_convolution_in_fp32_and_fp32_keeps_the_network_whole():
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor

    net, spec = load_model(MODEL)
    kinds = {}
    for precision in ("bf16", "fp32"):
        p = Predictor(net, spec.mean, spec.std, blend_weights(64, 8), CPU, 2, precision=precision)
        kinds[precision] = [type(m).__name__ for m in p.net.downs[1][1]]
        scores = p(np.full((1, 3, 64, 64), 120, np.uint8))
        assert scores.dtype == torch.float32 and scores.shape == (1, len(spec.classes), 64, 64)
    assert device_mod.BF16_FLOAT_LAYERS == ("downs.1.1.0",)
    assert kinds["bf16"][0] == "InFloat" and kinds["bf16"][3] == kinds["fp32"][0] == kinds["fp32"][3] == "Conv2d"


def test_bad_precisions_are_refused_with_the_choices():
    with pytest.raises(InputError, match="auto, fp32, bf16, int8, fp16"):
        device_mod.choose_precision(CPU, "int4")


def test_model_files_carry_calibration_windows(tmp_path):
    net, spec = load_model(MODEL)
    windows = net.calibration_windows
    assert windows.dtype == np.uint8 and windows.shape == (16, 3, 128, 128)
    assert windows.std() > 10  # imagery, not a constant
    # re-saving keeps them; other windows replace them; the network loads as before
    save_model(str(tmp_path / "a.safetensors"), net, spec, half=True)
    again, _ = load_model(str(tmp_path / "a.safetensors"))
    assert np.array_equal(again.calibration_windows, windows)
    other = np.full((2, 3, 32, 32), 7, np.uint8)
    save_model(str(tmp_path / "b.safetensors"), net, spec, calibration=other)
    assert np.array_equal(load_model(str(tmp_path / "b.safetensors"))[0].calibration_windows, other)
    net.calibration_windows = None
    save_model(str(tmp_path / "c.safetensors"), net, spec)
    assert load_model(str(tmp_path / "c.safetensors"))[0].calibration_windows is None
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert CALIBRATION_KEY in f.keys()


def test_int8_labels_agree_with_fp32_the_log_says_int8_and_the_package_is_reused(tmp_path, cache, tiny_int8,
                                                                                   monkeypatch):
    """The plumbing, on a small model whose package compiles in seconds; the bundled model's agreement is
    measured by scripts/bench.py precision and recorded in its file (auto reads it there)."""
    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    model = load_model(tiny_int8)
    labels, logs = {}, []
    for precision in ("fp32", "int8"):
        res = segment(CROP, str(tmp_path / f"{precision}.tif"), model, log=logs.append,
                      options=SegmentOptions(device="cpu", precision=precision))
        assert res.precision == precision
        with rasterio.open(res.class_path) as ds:
            labels[precision] = ds.read(1)
    agreement = (labels["fp32"] == labels["int8"]).mean()
    assert agreement > 0.97, agreement  # a random-weight network has near-ties everywhere: 98.9% when measured
    assert any("precision int8" in m for m in logs) and any(quantize.cache_dir() in m for m in logs)
    packages = [p for p in cache.glob("int8/*.pt2") if p.name == os.path.basename(
        quantize.package_path(model[0], model[1].mean, model[1].std, (2, 3, 64, 64)))]
    assert len(packages) == 1
    # another process (a later run) loads the package instead of compiling: fast, and the same labels
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r}); import rasterio; "
            "from landcover_plugin.core.model.model_file import load_model; "
            "from landcover_plugin.core.segment import SegmentOptions, segment; "
            f"m = load_model({tiny_int8!r}); t = time.perf_counter(); "
            f"r = segment({CROP!r}, {str(tmp_path / 'again.tif')!r}, m, log=print, "
            "options=SegmentOptions(device='cpu', precision='int8')); print('seconds', time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LANDCOVER_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Quantizing" not in done.stdout and packages[0].exists()
    with rasterio.open(tmp_path / "again.tif") as ds:
        assert np.array_equal(ds.read(1), labels["int8"])
    # a damaged package is compiled again rather than failing the job (the compiler's work stood in for by the
    # good package, which the first run already showed it builds)
    good = tmp_path / "good.pt2"
    shutil.copy(packages[0], good)
    packages[0].write_bytes(b"not a package")
    quantize._loaded.clear()
    rebuilt = []
    monkeypatch.setattr(quantize, "_compile", lambda *args: (rebuilt.append(args[-1]), shutil.copy(good, args[-1])))
    res = segment(CROP, str(tmp_path / "repaired.tif"), model, log=lambda m: None,
                  options=SegmentOptions(device="cpu", precision="int8"))
    with rasterio.open(res.class_path) as ds:
        assert np.array_equal(ds.read(1), labels["int8"])
    assert rebuilt == [str(packages[0])]


def test_an_int8_batch_shorter_than_the_compiled_one_runs_unpadded_with_the_same_scores(cache, tiny_int8):
    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor

    net, spec = load_model(tiny_int8)
    with rasterio.open(CROP) as ds:
        pixels = ds.read()
    windows = np.stack([pixels[:, y:y + 64, x:x + 64] for y, x in ((0, 0), (256, 0), (100, 256))])
    predictor = Predictor(net, spec.mean, spec.std, blend_weights(64, 16), CPU, 2, precision="int8")
    calls = []
    package = predictor.int8
    predictor.int8 = lambda x: calls.append(len(x)) or package(x)
    together = predictor(windows)  # a batch of two, then one
    assert calls == [2, 1] and together.shape == (3, len(spec.classes), 64, 64)
    alone = predictor(windows[2:])
    torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=1e-5)


def test_int8_without_calibration_windows_is_a_clear_error_and_writes_nothing(tmp_path, cache):
    net, spec = load_model(MODEL)
    net.calibration_windows = None
    out = tmp_path / "classes.tif"
    with pytest.raises(InputError, match="calibration windows"):
        segment(CROP, str(out), (net, spec), options=SegmentOptions(device="cpu", precision="int8"),
                log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_bench_precision_reports_agreement_and_both_figures(tmp_path):
    """On a 320-px part of the crop: bf16 without bf16 kernels (an AVX2 CPU) runs at a few hundredths of a
    megapixel a second, and the bench's figures are measured on real sets (README), not here."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    with rasterio.open(CROP) as ds, rasterio.open(CROP_MASK) as mk:
        write_raster(images / "crop.tif", ds.read()[:, :320, :320])
        write_raster(masks / "crop.tif", mk.read(1)[:320, :320])
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "precision", str(images),
                           str(masks), "--precision", "bf16", "--json"], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["precision"] == "bf16"
    for key in ("agreement", "miou_fp32", "miou", "mp_per_s_fp32", "mp_per_s"):
        assert isinstance(result[key], float), key
    assert 0.98 < result["agreement"] <= 1 and abs(result["miou"] - result["miou_fp32"]) < 0.02


def test_bench_precision_records_int8_agreement_where_auto_looks_for_it(tmp_path):
    import shutil
    from types import SimpleNamespace

    from landcover_plugin.core.model.model_file import read_spec

    bench = load_script("bench_precision")
    path = str(tmp_path / "mine.safetensors")
    shutil.copy(MODEL, path)
    spec = read_spec(path).with_training(int8=None)
    before = load_model(MODEL)[0].state_dict()
    result = {"precision": "int8", "agreement": 0.9961, "miou_fp32": 0.61, "miou": 0.6102,
              "images": [{"image": "a.tif", "agreement": 0.993}, {"image": "b.tif", "agreement": 0.998}]}
    args = SimpleNamespace(images=str(tmp_path), record="never trained on")
    bench.record_int8(path, spec, result, args)
    net, recorded = load_model(path)  # the checksum is whole
    assert quantize.faithful(recorded)
    record = recorded.training["int8"]
    assert record["scheme"] == quantize.SCHEME and record["agreement"] == 0.9961
    assert "2 images" in record["images"] and "never trained on" in record["images"]
    assert all(torch.equal(t, before[k]) for k, t in net.state_dict().items())
    assert np.array_equal(net.calibration_windows, load_model(MODEL)[0].calibration_windows)
    bench.record_int8(path, spec, {**result, "agreement": 0.99}, args)
    assert not quantize.faithful(read_spec(path))
    with pytest.raises(InputError, match="bf16 did"):
        bench.record_int8(path, spec, {**result, "precision": "bf16"}, args)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "precision", str(tmp_path),
                           "--precision", "bf16", "--record", "--model", path], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode != 0 and "add --precision int8" in done.stderr and "Traceback" not in done.stderr


def test_a_failing_int8_compile_falls_back_under_auto_and_is_one_clear_error_when_forced(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDCOVER_CACHE_DIR", str(tmp_path / "empty-cache"))  # nothing compiled yet

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile error\nmany lines of compiler output")

    monkeypatch.setattr(quantize, "_compile", broken)
    monkeypatch.setattr(quantize, "int8_available", lambda: True)
    monkeypatch.setattr(precision_mod, "int8_verdict", lambda *args: (True, ""))
    model = load_model(MODEL)
    logs = []
    res = segment(CROP, str(tmp_path / "auto.tif"), model, log=logs.append,
                  options=SegmentOptions(device="cpu", precision="auto"))
    assert res.precision in ("bf16", "fp32") and os.path.exists(res.class_path)
    assert any("int8 could not be compiled" in m and "C++ compile error" in m for m in logs)
    assert res.precision_reason.startswith("auto: int8 could not be compiled")
    with rasterio.open(res.class_path) as ds:  # the class raster says what ran, and why
        assert ds.tags()["PRECISION"] == res.precision and ds.tags()["PRECISION_REASON"] == res.precision_reason
    with pytest.raises(InputError, match="int8 could not be compiled on this machine"):
        segment(CROP, str(tmp_path / "forced.tif"), model, log=lambda m: None,
                options=SegmentOptions(device="cpu", precision="int8"))
    assert not os.path.exists(tmp_path / "forced.tif")


def test_int8_agreement_on_held_out_images_in_memory_is_recorded_where_auto_looks(tmp_path, cache, monkeypatch,
                                                                                   tiny_int8):
    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    import shutil
    from types import SimpleNamespace

    from landcover_plugin.core.evaluation import int8_agreement
    from landcover_plugin.core.model.model_file import read_spec, rewrite

    path = str(tmp_path / "mine.safetensors")
    shutil.copy(tiny_int8, path)
    rewrite(path, read_spec(path).with_training(int8=None))  # as a freshly trained model: never measured
    with rasterio.open(CROP) as ds:
        image = ds.read()
    items = [SimpleNamespace(image=image[:, :48, :48]), SimpleNamespace(image=image[:, 200:400, 100:300])]
    logs = []
    record = int8_agreement.record_on_validation(path, items, "landcover:train", logs.append)
    net, spec = load_model(path)  # the checksum is whole after the rewrite
    assert spec.training["int8"] == record and record["scheme"] == quantize.SCHEME
    assert 0.97 < record["agreement"] <= 1.0 and record["images"].startswith("2 validation images or blocks")
    assert quantize.faithful(spec) == (record["agreement"] >= quantize.INT8_MIN_AGREEMENT)
    assert any("int8 labels agreed" in m for m in logs)
    assert all(torch.equal(t, load_model(tiny_int8)[0].state_dict()[k]) for k, t in net.state_dict().items())
    # a cap on the windows measured keeps a large validation set from taking long: one window of the first item
    monkeypatch.setattr(int8_agreement, "MAX_WINDOWS", 1)
    assert int8_agreement.measure(net, spec, items)[2:] == (1, 48 * 48)
    assert int8_agreement.measure(net, spec, items[1:])[2:] == (1, spec.tile_size ** 2)  # its top-left window
    # cancelled, or nothing held out: the file stays as it was
    rewrite(path, spec.with_training(int8=None))
    assert int8_agreement.record_on_validation(path, items, "x", logs.append, cancel=lambda: True) is None
    assert int8_agreement.record_on_validation(path, [], "x", logs.append) is None
    assert read_spec(path).training["int8"] is None and any("cancelled" in m for m in logs)
