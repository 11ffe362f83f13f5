import json
import os
import subprocess
import sys

import pytest
from conftest import FIXTURE, FIXTURE_MASK, load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "evaluate.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_evaluate_prints_scores_and_json(model_file):
    out = _run(FIXTURE, FIXTURE_MASK, "--model", model_file, "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("miou", "iou", "f1", "accuracy", "precision", "recall"):
        assert key in result
    assert set(result["iou"]) == {"background", "building", "woodland/vegetation", "water", "road"}
    assert 0 <= result["miou"] <= 1 and result["pairs"] == 1
    assert any(line.startswith("mean IoU") for line in lines)


def test_evaluate_pairs_a_folder(model_file):
    out = _run(os.path.dirname(FIXTURE), "--model", model_file, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["pairs"] == 1


def test_evaluate_errors_are_one_line(tmp_path, model_file):
    """Each error is one line starting "error: ", exit code 2, no traceback: a pickle for a model, no bundled
    default model (the models folder pointed elsewhere), a mask of another size than its image."""
    def one_line(out, words):
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and words in out.stderr, out.stderr

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a model")
    one_line(_run(FIXTURE, FIXTURE_MASK, "--model", str(bad)), "pickle")
    no_default = (f"import sys; sys.path[:0] = [{os.path.join(ROOT, 'scripts')!r}, {ROOT!r}]; "
                  "from landcover_plugin.core.model import bundled; bundled.MODELS_DIR = '/nonexistent'; "
                  "import evaluate, _common; _common.run_main(evaluate.main)")
    one_line(subprocess.run([sys.executable, "-c", no_default, FIXTURE, FIXTURE_MASK], capture_output=True,
                            text=True, timeout=300), "No bundled default model")
    import numpy as np
    from conftest import write_raster

    small = write_raster(tmp_path / "small_mask.tif", np.zeros((100, 80), np.uint8))
    one_line(_run(FIXTURE, small, "--model", model_file, "--device", "cpu"),
             "small_mask.tif does not have the size of its image (768 x 768 pixels)")


def test_segment_script_writes_every_output(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "segment.py"), FIXTURE, str(tmp_path),
                          "--min-area", "4", "--json"], capture_output=True, text=True, timeout=300)
    if "No bundled default model" in out.stderr:
        pytest.skip("no bundled default model")
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path)) == [".landcover_done.json", "areas.csv", "classes.tif", "classes.tif.aux.xml",
                                            "confidence.tif", "landcover.gpkg"]
    result = json.loads(out.stdout.strip().splitlines()[-1])["inputs"][0]
    assert result["error"] is None and sum(a["pixels"] for a in result["areas"]) == 768 * 768
    with open(tmp_path / "areas.csv") as fh:  # the same table as the plugin's CSV report
        assert fh.readline().strip() == "class_id,class_name,pixels,area_pixels,percent"
    again = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "segment.py"), FIXTURE, str(tmp_path),
                            "--min-area", "4"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already done" in again.stdout  # same model and settings: not rerun


def test_bench_reports_every_stage_and_the_onnx_ratio(tmp_path):
    pytest.importorskip("onnxruntime")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--size", "300",
                          "--base-channels", "4", "--tile", "128", "--overlap", "16", "--device", "cpu",
                          "--compare-onnx", "--json", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("megapixels", "seconds", "mp_per_s", "read_s", "infer_s", "blend_s", "write_s", "vectorize_s",
                "peak_rss_mb", "device", "onnx_mp_per_s", "ratio_vs_onnx"):
        assert key in result, key
    assert result["megapixels"] == pytest.approx(0.09) and result["peak_rss_mb"] > 50
    # three runs by default, each beside its own onnxruntime pass; the one reported is the median ratio's
    assert len(result["runs"]) == 3
    assert result["ratio_vs_onnx"] == sorted(r["ratio_vs_onnx"] for r in result["runs"])[1]
    assert result["mp_per_s"] in [r["mp_per_s"] for r in result["runs"]]
    assert os.listdir(tmp_path) == []


def test_class_offsets_undo_a_prior_that_favours_one_class_everywhere():
    import numpy as np

    offsets = load_script("class_offsets")
    rng = np.random.default_rng(0)
    ids, names = [0, 1, 2], ["a", "b", "c"]

    def biased(n):  # scores that know the class but add 1.0 to class 1 everywhere
        ref = rng.integers(0, 3, n).astype(np.uint8)
        logp = rng.normal(0, 0.6, (n, 3)).astype(np.float32)
        logp[np.arange(n), ref] += 1.0
        logp[:, 1] += 1.0
        return logp, ref

    fit, test = biased(20000), biased(20000)
    found = offsets.fit_offsets(*fit, ids, names)
    assert found[0] == 0 and -1.4 <= found[1] - (found[0] + found[2]) / 2 <= -0.6
    zero = np.zeros(3, np.float32)
    before = offsets.mean_iou(*test, zero, ids, names)["miou"]
    after = offsets.mean_iou(*test, found, ids, names)["miou"]
    assert after > before + 0.05


def test_class_offsets_script_reports_both_sets(model_file, tmp_path):
    """Offsets fitted on one pair and measured on another: the fit can only gain (the search starts from no
    offsets), and the test figures are the other pair's (what the engine's own classes score there)."""
    import numpy as np
    import rasterio
    from conftest import write_raster
    from PIL import Image

    from landcover_plugin.core.segment import SegmentOptions, segment

    with rasterio.open(FIXTURE) as ds:
        bottom = ds.read()[:, 384:]
    test_image = write_raster(tmp_path / "bottom.tif", bottom)
    test_mask = write_raster(tmp_path / "bottom_mask.tif", np.asarray(Image.open(FIXTURE_MASK))[384:])
    script = os.path.join(ROOT, "scripts", "class_offsets.py")
    out = subprocess.run([sys.executable, script, FIXTURE, FIXTURE_MASK, test_image, test_mask, "--model", model_file,
                          "--stride", "4", "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["offsets"]) == {"background", "building", "woodland/vegetation", "water", "road"}
    assert result["offsets"]["background"] == 0
    assert result["fit_miou_with"] >= result["fit_miou_without"]
    classes = segment(test_image, str(tmp_path / "c.tif"), model_file, log=lambda m: None,
                      options=SegmentOptions(device="cpu", precision="fp32"))
    with rasterio.open(classes.class_path) as ds:
        labels = ds.read(1)[::4, ::4]
    ref = np.asarray(Image.open(FIXTURE_MASK))[384:][::4, ::4]
    ious = []
    for c in range(5):
        union = ((labels == c) | (ref == c)) & (ref != 255)
        if (ref == c).any():
            ious.append(((labels == c) & (ref == c)).sum() / union.sum())
    assert result["test_miou_without"] == pytest.approx(np.mean(ious), abs=0.01)
    assert result["test_miou_without"] != result["fit_miou_without"]
