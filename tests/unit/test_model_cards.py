"""Every bundled model has a card, and the card's figures are what scripts/evaluate.py prints.

The committed-crop check runs everywhere; the held-out figures are checked where ../shared/data
is at hand (it is not committed), by `make check-cards`, which keeps their two minutes out of make test.
Cards give fp32 figures, which every CPU reproduces.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from landcover_plugin.core.model.bundled import MODELS_DIR, bundled_models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODELS = [m.key for m in bundled_models()]
# models scored by evaluate.py on the committed RGB crop; Dynamic World's card check is its TensorFlow fixture
# (test_dynamic_world.py)
CROP_MODELS = [m.key for m in bundled_models() if m.spec.architecture == "unet"]
SECTIONS = ("## Data and licence", "## Quality on held-out data", "## Known failure cases", "## Speed",
            "## Reproduce", "## Check on the committed test crop")


def card(key: str) -> str:
    with open(os.path.join(MODELS_DIR, key + ".md"), encoding="utf-8") as fh:
        return fh.read()


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def table_iou(text: str) -> dict:
    """{class name or "mean": IoU} from the first markdown table of `text` (first two columns)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and re.fullmatch(r"\d\.\d{3}", cells[1]):
            rows[cells[0]] = float(cells[1])
    return rows


def evaluate(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), *args, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_matches(printed: dict, card_rows: dict):
    assert card_rows, "the card has no figures"
    if "mean" in card_rows:  # a card scoring one class on building-only masks gives no mean
        assert card_rows.pop("mean") == pytest.approx(printed["miou"], abs=0.0011)
    for name, iou in card_rows.items():
        assert iou == pytest.approx(printed["iou"][name], abs=0.0011), name


def test_the_models_are_bundled_and_small():
    assert MODELS == ["landcover_default", "buildings_osm", "dynamic_world"]
    for m in bundled_models():
        assert os.path.getsize(m.path) < 20 * 1024 * 1024


@pytest.mark.parametrize("key", MODELS)
def test_card_has_every_section_and_its_pictures_exist(key):
    text = card(key)
    for heading in SECTIONS:
        assert heading + "\n" in text, heading
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", section(text, "## Known failure cases"))
    assert pictures and all(os.path.exists(os.path.join(MODELS_DIR, p)) for p in pictures)
    assert "MP/s" in section(text, "## Speed")
    assert "licen" in section(text, "## Data and licence").lower()


@pytest.mark.parametrize("key", CROP_MODELS)
def test_committed_crop_figures_are_what_evaluate_prints(key):
    part = section(card(key), "## Check on the committed test crop")
    command = re.search(r"`python (scripts/evaluate\.py [^`]+)`", part).group(1)
    args = shlex.split(command)[1:]
    assert "--precision" in args and f"--model {key}" in command
    assert_matches(evaluate(args), table_iou(part))


HELD_OUT = {  # where each model's held-out figures come from: its card says why
    "landcover_default": "osm_buildings_all",  # trained on every Dubai tile we hold
    "buildings_osm": "osm_buildings_heldout",
}


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is not here")
@pytest.mark.skipif(not os.environ.get("LANDCOVER_CARD_CHECKS"), reason="the held-out card figures are checked by "
                    "make check-cards (about two minutes of evaluation on 143 chips)")
@pytest.mark.parametrize("key", list(HELD_OUT))
def test_held_out_figures_are_what_evaluate_prints(key, tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "buildings_data.py"), SHARED, str(tmp_path)],
                   check=True, capture_output=True)
    folder = tmp_path / "heldout" if HELD_OUT[key] == "osm_buildings_heldout" else tmp_path
    images, masks = folder / "images", folder / "masks"
    printed = evaluate([str(images), str(masks), "--model", key, "--precision", "fp32", "--device", "cpu"])
    assert_matches(printed, table_iou(section(card(key), "## Quality on held-out data")))
