import numpy as np
import pytest

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.evaluation.metrics import confusion, scores
from landcover_plugin.core.io.pairs import pair_files, pairs_from


def test_confusion_and_scores_by_hand():
    ref = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 255]])
    m = confusion(ref, pred, [0, 1, 2, 3])
    assert m.tolist() == [[1, 1, 0, 0, 0], [0, 2, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    s = scores(m, ["a", "b", "c", "d"])
    assert s["iou"]["a"] == pytest.approx(1 / 3)  # tp 1, fn 1, fp 1
    assert s["iou"]["b"] == pytest.approx(2 / 4)  # tp 2, fn 1 (nodata prediction), fp 1
    assert s["recall"]["b"] == pytest.approx(2 / 3) and s["precision"]["b"] == pytest.approx(2 / 3)
    assert s["iou"]["d"] is None  # absent from both: not in the mean
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s["accuracy"] == pytest.approx(4 / 7)
    assert s["f1"]["c"] == pytest.approx(2 * 1 / (2 + 1))


def test_perfect_prediction():
    ref = np.random.default_rng(0).integers(0, 5, (50, 50))
    s = scores(confusion(ref, ref, range(5)), list("abcde"))
    assert s["miou"] == 1.0 and s["accuracy"] == 1.0


def _touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_pairs_in_separate_folders(tmp_path):
    _touch(tmp_path / "images", "a.jpg", "b.jpg", "c.jpg")
    _touch(tmp_path / "masks", "a.png", "b.png")
    pairs = pair_files(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert [(p[0].split("/")[-1], p[1].split("/")[-1]) for p in pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]


def test_pairs_with_suffixes_in_one_folder(tmp_path):
    _touch(tmp_path, "1_sat.jpg", "1_mask.png", "x.jpg", "x_m.png", "lonely.jpg")
    pairs = sorted((p[0].split("/")[-1], p[1].split("/")[-1]) for p in pair_files(str(tmp_path)))
    assert pairs == [("1_sat.jpg", "1_mask.png"), ("x.jpg", "x_m.png")]


def test_no_pairs_is_explained(tmp_path):
    _touch(tmp_path, "a.jpg")
    with pytest.raises(InputError, match="No image/mask pairs"):
        pair_files(str(tmp_path))


def test_area_report_shows_hectares_only_for_ground_areas(tmp_path):
    from landcover_plugin.core.evaluation.report import write_area_report
    from landcover_plugin.core.vector.areas import ClassArea

    areas = [ClassArea(0, "background", "#d9d0c1", 300, 1200.0, 75.0), ClassArea(3, "water", "#2b7bd6", 100, 400.0,
                                                                                 25.0)]
    write_area_report(str(tmp_path / "m.html"), areas, "m", "t", {"model": "x"})
    write_area_report(str(tmp_path / "p.html"), areas, "pixels", "t", {})
    write_area_report(str(tmp_path / "m.csv"), areas, "m", "t", {})
    metres, pixels = (tmp_path / "m.html").read_text(), (tmp_path / "p.html").read_text()
    assert "hectares" in metres and "<td>0.120</td>" in metres and "<th>0.160</th>" in metres
    assert "hectares" not in pixels and "area (pixels)" in pixels
    assert (tmp_path / "m.csv").read_text().splitlines()[2] == "3,water,100,400.000,25.000"


def test_pairs_from_one_file_needs_its_mask_file(tmp_path):
    image, mask = tmp_path / "a.jpg", tmp_path / "a.png"
    image.write_bytes(b"x")
    with pytest.raises(InputError, match="mask file"):
        pairs_from(str(image), str(tmp_path))
    mask.write_bytes(b"x")
    assert pairs_from(str(image), str(mask)) == [(str(image), str(mask))]
