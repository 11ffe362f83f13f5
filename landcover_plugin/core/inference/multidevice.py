"""One raster on several devices: horizontal parts of its rows, each run by a process of its own.

Each process opens the raster, runs the sliding window over the window rows its part
needs (one strip above it more, so that its first rows blend exactly as in a run over
the whole raster) and sends finished block rows back; only this process writes the
outputs. Parts start on block rows, so every block of a GeoTIFF is written once.

Processes are spawned, not forked: CUDA cannot run in a forked child, and a forked
QGIS would carry its whole GUI along.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import Cancelled, InputError
from ..interpreter import python_program
from ..io.reader import Region
from ..model.device import auto_batch, read_threads, torch_or_error, usable_cores

POLL_S = 0.2
PROGRESS_STEP = 0.01  # fraction of a part between progress messages


@dataclass
class PartJob:
    """What every part needs, sent to each process: plain data and the network (on the CPU)."""

    input_path: str
    bands: tuple
    region: Region
    scale: float
    mean: tuple
    std: tuple
    fill: tuple  # raw values nodata pixels are given (transforms.neutral_values)
    tile: int
    overlap: int
    batch_size: int  # 0: chosen on each device
    base_width: int  # of the network, for choosing the batch
    tta: bool
    precision: str
    compiled: bool  # fp32 compiled for the CPU (precision.Decision.compiled)
    classes: int
    plan: object  # sinks.SinkPlan
    network: object


@dataclass(frozen=True)
class Part:
    device: str
    rows: tuple[int, int]
    threads: int  # CPU threads for this process's network; 0 leaves torch's choice


def split_rows(height: int, devices: list[str], block: int, cores: int | None = None) -> list[Part]:
    """Contiguous parts of about equal height, one per device, starting on multiples of `block`;
    fewer parts than devices when the raster has fewer block rows. CPU devices share the cores."""
    n = max(1, min(len(devices), -(-height // block)))
    starts = sorted({min(height, round(height * i / n / block) * block) for i in range(n)} | {0})
    bounds = [s for s in starts if s < height] + [height]
    if not cores:
        cores = usable_cores()
    used = devices[:len(bounds) - 1]
    cpu_parts = sum(d == "cpu" for d in used)
    threads = max(1, cores // cpu_parts) if cpu_parts else 0
    return [Part(d, (a, b), threads if d == "cpu" else 0) for d, a, b in zip(used, bounds, bounds[1:])]


def python_executable() -> str:
    """The Python program spawned processes run (interpreter.python_program), or a clear error."""
    found = python_program()
    if not found:
        raise InputError("No Python program was found to run the parts of the raster on several devices; "
                         "choose a single device.")
    return found


def run_parts(job: PartJob, parts: list[Part], write: Callable[[int, list], None],
              progress: Callable[[float], None], cancel: Callable[[], bool], log: Callable[[str], None],
              watch=None) -> None:
    """Run `parts` at once, handing every finished block row to write(row0, arrays) here.
    Raises Cancelled, InputError (a part's own), or RuntimeError when a process fails or dies."""
    from multiprocessing import spawn

    torch = torch_or_error()
    ctx = torch.multiprocessing.get_context("spawn")
    # Two block rows per part in flight: enough to keep every process busy, and the memory flat.
    out, stop = ctx.Queue(maxsize=2 * len(parts)), ctx.Event()
    procs = [ctx.Process(target=_run_part, args=(job, part, i, out, stop), daemon=True,
                         name=f"landcover-part-{i}") for i, part in enumerate(parts)]
    heights = np.array([b - a for a, b in (p.rows for p in parts)], float)
    fractions = np.zeros(len(parts))
    finished: set[int] = set()
    log(f"Running {len(parts)} parts of the raster at once: " +
        ", ".join(f"rows {p.rows[0]}-{p.rows[1]} on {p.device}" for p in parts) + ".")
    try:
        executable = spawn.get_executable()  # a setting of the whole process: QGIS's, other plugins'
        ctx.set_executable(python_executable())
        try:
            for p in procs:
                p.start()
        finally:
            ctx.set_executable(executable)
        while len(finished) < len(parts):
            if cancel():
                raise Cancelled("Cancelled; no output was written.")
            try:
                msg = out.get(timeout=POLL_S)
            except queue.Empty:
                _check_alive(procs, parts, finished)
                continue
            kind, i = msg[0], msg[1]
            if kind == "rows":
                write(msg[2], msg[3])
            elif kind == "progress":
                fractions[i] = msg[2]
                progress(float((fractions * heights).sum() / heights.sum()))
            elif kind == "done":
                finished.add(i)
                if watch is not None:
                    for name, seconds in msg[2].items():
                        watch.add(f"{name} (parts)", seconds)
            elif kind == "error":
                _, _, text, is_input = msg
                if is_input:
                    raise InputError(text)
                raise RuntimeError(f"The part on {parts[i].device} failed: {text}")
    finally:
        stop.set()
        _stop(procs, out)


def _check_alive(procs, parts, finished) -> None:
    for i, p in enumerate(procs):
        if i not in finished and p.exitcode not in (None, 0):
            how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            raise RuntimeError(f"The process running rows {parts[i].rows[0]}-{parts[i].rows[1]} on {parts[i].device} "
                               f"stopped ({how}; out of memory?); no output was written.")


def _stop(procs, out) -> None:
    """Let every process end; ones blocked on a full queue are drained, ones that hang are ended."""
    procs = [p for p in procs if p.pid is not None]  # started
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            while True:
                out.get_nowait()
        except queue.Empty:
            pass
        for p in procs:
            p.join(timeout=0.05)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join()
    out.close()
    out.join_thread()


def _run_part(job: PartJob, part: Part, index: int, out, stop) -> None:
    """The body of one process."""
    try:
        watch = _run(job, part, index, out, stop)
        out.put(("done", index, watch.rounded()))
    except Cancelled:
        out.put(("done", index, {}))
    except InputError as exc:
        out.put(("error", index, str(exc), True))
    except BaseException as exc:  # noqa: BLE001 (reported to the main process, which raises it)
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        out.put(("error", index, f"{type(exc).__name__}: {text}", False))


def _run(job: PartJob, part: Part, index: int, out, stop):
    sent = [0.0]

    def progress(f):
        if f - sent[0] >= PROGRESS_STEP or f >= 1.0:
            sent[0] = f
            out.put(("progress", index, f))

    # copies: the queue pickles in a thread of its own, after the buffer has moved on
    return run_rows(job, part, lambda row0, arrays: out.put(("rows", index, row0, [a.copy() for a in arrays])),
                    progress, stop.is_set)


def run_rows(job: PartJob, part: Part, emit, progress, stop, network=None, predictors: dict | None = None):
    """Run the sliding window over `part`'s rows of `job` on `part.device`, handing each finished block row
    to emit(row0, arrays); return the Stopwatch. `network` replaces job.network (a Dask worker's copy);
    `predictors` keeps the predictor built here for the next call with the same settings."""
    import rasterio

    from ..io.reader import WindowReader
    from ..model.predictor import Predictor
    from ..stopwatch import Stopwatch
    from .sliding import slide
    from .windows import blend_weights

    torch = torch_or_error()
    device = torch.device(part.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if part.threads:
        torch.set_num_threads(part.threads)
    watch = Stopwatch()
    batch = job.batch_size or auto_batch(device, job.tile, job.base_width, job.compiled)
    network = job.network if network is None else network
    key = (id(network), str(device), batch, job.precision, job.compiled, job.tta, job.tile, job.overlap)
    predictor = (predictors or {}).get(key)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(job.input_path) as src:
        reader = WindowReader(src, job.bands, job.region, job.scale, job.fill)
        if predictor is None:
            predictor = Predictor(network, job.mean, job.std, blend_weights(job.tile, job.overlap), device, batch,
                                  job.tta, job.precision, compiled=job.compiled)
            if predictors is not None:  # one kept: a worker given another network has no use for the last
                predictors.clear()
                predictors[key] = predictor
        sink = job.plan.build(emit, job.tile, device, part.rows)
        slide(reader, predictor, job.classes, job.tile, job.overlap, sink, progress, stop, watch,
              read_threads(device), rows=part.rows)
    return watch
