"""int8 labels against fp32's on held-out images in memory, recorded in the model file.

auto runs a model in int8 (on CPUs without bf16 kernels) only where its file records that int8
agreed with fp32 on imagery it was not trained on (quantize.faithful). A model the user trains
has held-out validation blocks of their own imagery: measured there after training, the figure
lets auto choose int8 for it, as scripts/bench.py precision --record does with image files.
"""
from __future__ import annotations

import datetime

from ..errors import Cancelled
from ..model import quantize

# windows of the model's tile the measurement runs at most (each in fp32 and int8): about half a
# minute on two cores, besides compiling the int8 package (15-40 s, kept for the segment runs after)
MAX_WINDOWS = 32


def store(path: str, spec, agreement: float, images: str, command: str) -> tuple[dict, str]:
    """Write the model file's training.int8 entry, which quantize.faithful reads (the other metadata and the
    tensors unchanged): (the entry, what auto will do with the model, for the log)."""
    from ..model.model_file import rewrite

    record = {"agreement": round(agreement, 5), "scheme": quantize.SCHEME, "images": images, "command": command,
              "date": datetime.date.today().isoformat()}
    spec = spec.with_training(int8=record)
    rewrite(path, spec)
    verdict = "auto will run it in int8 on CPUs without bf16 kernels" if quantize.faithful(spec) else \
        f"under the {100 * quantize.INT8_MIN_AGREEMENT:.1f}% auto asks, so auto keeps it in floating point"
    return record, verdict


def measure(network, spec, items, cancel=lambda: False, log=lambda m: None) -> tuple[float, float, int, int]:
    """(share of the pixels of `items` (objects with .image, raw (bands, H, W)) whose int8 label is fp32's,
    the worst item's share, items measured, pixels measured), on this CPU with the model's tile and overlap;
    a large item is measured on its top-left part, and items beyond MAX_WINDOWS windows are left out."""
    from ..inference.sliding import predict_array
    from ..inference.windows import blend_weights, window_grid
    from ..model.device import auto_batch, resolve_device
    from ..model.predictor import Predictor

    cpu = resolve_device("cpu")
    tile, overlap = spec.tile_size, spec.overlap
    weights = blend_weights(tile, overlap)
    batch = auto_batch(cpu, tile, spec.base_width)
    fp32, int8 = (Predictor(network, spec.mean, spec.std, weights, cpu, batch, precision=p, log=log)
                  for p in ("fp32", "int8"))
    side = tile + (int(MAX_WINDOWS ** 0.5) - 1) * (tile - overlap)  # one item: at most about MAX_WINDOWS windows
    same = total = windows = used = 0
    worst = 1.0
    for item in items:
        image = item.image[:, :side, :side]
        ys, xs = window_grid(*image.shape[1:], tile, overlap)
        windows += len(ys) * len(xs)
        if used and windows > MAX_WINDOWS:
            break
        if cancel():
            raise Cancelled("Cancelled while measuring int8 against fp32.")
        a, b = (predict_array(p, image, spec.num_classes, tile, overlap) for p in (fp32, int8))
        agree = int((a == b).sum())
        same, total, used = same + agree, total + a.size, used + 1
        worst = min(worst, agree / a.size)
    return same / max(total, 1), worst, used, total


def record_on_validation(path: str, items, command: str, log, cancel=lambda: False) -> dict | None:
    """Measure the model file at `path` on its held-out validation `items` and store the figure in the file;
    the record, or None (with a log line saying why) where int8 cannot be measured here."""
    from ..model.model_file import load_model

    if not items:
        return None
    if not quantize.int8_available():
        log("int8 not measured: it needs the torchao package and a C++ compiler on this machine; without the "
            "figure auto runs this model in floating point.")
        return None
    network, spec = load_model(path)
    log("Measuring int8 against fp32 on the validation imagery, so that auto may run this model in int8 on CPUs "
        "without bf16 kernels (compiling it once takes 15-40 s)...")
    try:
        agreement, worst, used, pixels = measure(network, spec, items, cancel, log)
    except Cancelled:
        log("int8 measurement cancelled: the model file is written without the figure.")
        return None
    except Exception as exc:  # Inductor's compiler can fail on a machine we never saw; the model stands
        log(f"int8 could not be measured here ({type(exc).__name__}: {str(exc).strip()[:200]}); without the figure "
            f"auto runs this model in floating point.")
        return None
    about = f"{used} validation images or blocks held out from training ({pixels / 1e6:.2f} MP)"
    record, verdict = store(path, spec, agreement, f"{about}: {100 * agreement:.3f}% (worst {100 * worst:.2f}%)",
                            command)
    log(f"int8 labels agreed with fp32's on {100 * agreement:.3f}% of the pixels of {used} validation images or "
        f"blocks: {verdict}.")
    return record
