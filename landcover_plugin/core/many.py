"""Many rasters (files, folders, globs, a VRT mosaic) in one call, in this process or on a Dask cluster.

Each input gets what segment() writes for one (classes.tif, confidence.tif, landcover.gpkg) and areas.csv,
under OUT/<stem>/ when there are several inputs, in OUT/ for one. Inputs run side by side on a cluster,
each as blocks of rows (cluster.py); an input that fails is reported with its reason and the others
still finish. An input whose outputs a previous call finished with the same model and settings is
skipped, and a rerun of an interrupted one skips its blocks already done.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .errors import InputError, LandcoverError

logger = logging.getLogger("landcover")

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg", ".ecw", ".sid")
SPOOL = ".landcover_blocks"  # under OUT: finished blocks of unfinished inputs
DONE = ".landcover_done.json"  # in an input's output folder: the key of the run that finished it
CONNECT_TIMEOUT = "20s"  # for --scheduler: how long an unreachable scheduler is tried


@dataclass
class InputResult:
    input: str
    out_dir: str
    result: object | None = None  # a SegmentResult
    error: str | None = None
    skipped: bool = False  # finished by an earlier call


def expand_inputs(items) -> list[str]:
    """Files as given (GDAL paths such as /vsicurl/ included), the rasters of a folder, the matches of a
    glob; in order, each once."""
    found = []
    for item in items:
        if os.path.isdir(item):
            found += sorted(os.path.join(item, n) for n in os.listdir(item) if n.lower().endswith(RASTER_EXTENSIONS))
        elif any(c in item for c in "*?[") and not item.startswith("/vsi"):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"Nothing matches {item}.")
            found += matches
        else:
            found.append(item)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError("No input raster was given (a folder holds none with a raster extension).")
    return unique


def output_dirs(inputs: list[str], out_dir: str) -> list[str]:
    """OUT for one input; OUT/<stem> for several, made unique where two inputs share a stem."""
    if len(inputs) == 1:
        return [out_dir]
    dirs, seen = [], {}
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "input"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(os.path.join(out_dir, stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
    return dirs


def _run_key(path: str, spec_name: str, network, options) -> str:
    """The input as it is now, the model's weights and the settings: what makes earlier outputs reusable."""
    from .inference.spool import add_input, add_weights

    digest = hashlib.sha256()
    add_input(digest, path)
    digest.update(repr((spec_name, dataclasses.replace(options, cluster=None))).encode())
    add_weights(digest, network)
    return digest.hexdigest()[:24]


def _finished(out_dir: str, key: str, polygons: bool) -> bool:
    names = ["classes.tif", "confidence.tif", "areas.csv"] + (["landcover.gpkg"] if polygons else [])
    try:
        with open(os.path.join(out_dir, DONE)) as fh:
            done = json.load(fh).get("key") == key
    except (OSError, ValueError):
        return False
    return done and all(os.path.exists(os.path.join(out_dir, n)) for n in names)


def connect(workers: int | None = None, scheduler: str | None = None, log: Callable = logger.info):
    """(client, threads per worker): a local cluster of `workers` processes, or the cluster at `scheduler`."""
    from .model.device import usable_cores

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("Running on a cluster needs Dask: pip install \"distributed>=2024\".") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its start-up chatter; our log says where it is
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"The Dask scheduler at {scheduler} cannot be reached ({exc}); check the address "
                             "and that the scheduler runs.") from None
        threads = 0
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        threads = max(1, usable_cores() // workers)
    log(f"Dask cluster {client.scheduler.address}: {len(client.scheduler_info()['workers'])} worker(s); "
        f"dashboard {client.dashboard_link}")
    return client, threads


def segment_many(inputs, out_dir: str, model=None, options=None, workers: int | None = None,
                 scheduler: str | None = None, block_size: int | None = None, polygons: bool = True,
                 log: Callable | None = None, progress: Callable[[float], None] | None = None) -> list[InputResult]:
    """Classify every input into its output folder; returns one InputResult an input, failures included."""
    from .model.bundled import resolve_model_path
    from .model.model_file import load_model
    from .segment import SegmentOptions

    log = log or logger.info
    paths = expand_inputs(inputs)
    dirs = output_dirs(paths, out_dir)
    made = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model = model if isinstance(model, tuple) else load_model(resolve_model_path(model))
    results = [InputResult(p, d) for p, d in zip(paths, dirs)]
    client, threads = None, 0
    if workers or scheduler:
        try:
            client, threads = connect(workers, scheduler, log)
        except InputError as exc:
            for r in results:
                r.error = str(exc)
            if made:
                os.rmdir(out_dir)
            return results
    runs = _Runs(results, model, options or SegmentOptions(), out_dir, polygons, log, progress)
    if client is not None:
        runs.on_cluster(client, threads, block_size)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(paths), workers or (8 if scheduler else 1)))) as pool:
            list(pool.map(runs.run, range(len(paths))))
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and workers:
                cluster.close()
        for folder in (os.path.join(out_dir, SPOOL), out_dir if made else None):
            if folder and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)  # made here and left empty: nothing came of the run
    return results


class _Runs:
    """The inputs' runs, each in a thread of its own, and their shared progress."""

    def __init__(self, results, model, options, out_dir, polygons, log, progress):
        self.results, self.model, self.options, self.out_dir = results, model, options, out_dir
        self.polygons, self.log, self.progress = polygons, log, progress
        self.fractions = [0.0] * len(results)
        self.lock = threading.Lock()
        self.cluster_options = options

    def on_cluster(self, client, threads: int, block_size: int | None) -> None:
        """Run the inputs' blocks on the client's cluster, the network sent to the workers once (as a task
        that Dask runs again should every worker holding it be lost)."""
        from .inference.cluster import DEFAULT_BLOCK, Cluster, network_task

        network = network_task(client, self.model[0])
        device = self.options.device if self.options.device in ("auto", "cpu", "cuda") else "auto"  # lists: per worker
        self.cluster_options = dataclasses.replace(self.options, cluster=Cluster(
            client, os.path.join(self.out_dir, SPOOL), block_size or DEFAULT_BLOCK, threads, device, network))

    def report(self, i: int, fraction: float) -> None:
        with self.lock:
            self.fractions[i] = fraction
            if self.progress:
                self.progress(sum(self.fractions) / len(self.fractions))

    def run(self, i: int) -> None:
        item, (network, spec) = self.results[i], self.model
        try:
            key = _run_key(item.input, spec.name, network, self.options)
            if _finished(item.out_dir, key, self.polygons):
                item.skipped = True
                self.log(f"{item.input}: finished by an earlier run with the same model and settings; skipped")
            else:
                item.result = _segment_one(item, self.model, self.cluster_options, self.polygons, key,
                                           lambda f: self.report(i, f), self.log)
        except Exception as exc:  # noqa: BLE001 (an input's failure is its own: the others go on)
            item.error = str(exc) if isinstance(exc, LandcoverError) else f"{type(exc).__name__}: {exc}"
            self.log(f"{item.input}: failed: {item.error}")
            if os.path.isdir(item.out_dir) and not os.listdir(item.out_dir) and item.out_dir != self.out_dir:
                os.rmdir(item.out_dir)  # made for it, left empty
        self.report(i, 1.0)


def _segment_one(item: InputResult, model, options, polygons: bool, key: str, progress, log):
    from .evaluation.report import write_area_report
    from .segment import segment

    os.makedirs(item.out_dir, exist_ok=True)
    out = os.path.join
    result = segment(item.input, out(item.out_dir, "classes.tif"), model,
                     confidence_path=out(item.out_dir, "confidence.tif"),
                     vector_path=out(item.out_dir, "landcover.gpkg") if polygons else None, options=options,
                     progress=progress, log=lambda m: log(f"{os.path.basename(item.input)}: {m}"))
    tmp = out(item.out_dir, ".areas.part.csv")
    write_area_report(tmp, result.areas, result.area_units, item.input, {})
    os.replace(tmp, out(item.out_dir, "areas.csv"))
    with open(out(item.out_dir, DONE), "w") as fh:
        json.dump({"key": key, "input": item.input}, fh)
    return result
