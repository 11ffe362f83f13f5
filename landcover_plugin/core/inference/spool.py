"""The finished blocks of a cluster run, kept on the client's disk so that a rerun of the same job resumes:
one file a block, written under a temporary name and renamed when whole, named by what makes two runs'
blocks interchangeable (the input as it is now, the weights, every setting that shapes a block)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil

import numpy as np

from .multidevice import Part, PartJob


def job_key(job: PartJob, parts: list[Part]) -> str:
    """What makes two runs' blocks interchangeable: the input file as it is now, the network's weights,
    and every setting that changes a block's rows."""
    digest = hashlib.sha256()
    add_input(digest, job.input_path)
    digest.update(repr((dataclasses.replace(job, network=None), [p.rows for p in parts])).encode())
    add_weights(digest, job.network)
    return digest.hexdigest()[:24]


def add_input(digest, path: str) -> None:
    """Feed an input raster as it is now to a digest: its path and, for a local file, its size and time."""
    stat = os.stat(path) if os.path.exists(path) else None
    digest.update(repr((os.path.abspath(path) if stat else path, stat and (stat.st_size, stat.st_mtime_ns))).encode())


def add_weights(digest, network) -> None:
    """Feed a network's weights to a hashlib digest: two runs with equal digests used the same model."""
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


class Spool:
    """The finished blocks of one job: rows_<first>_<end>.npy, a sequence of np.save records (no pickle)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, part: Part) -> str:
        return os.path.join(self.folder, f"rows_{part.rows[0]}_{part.rows[1]}.npy")

    def done(self, part: Part) -> bool:
        return os.path.exists(self.path(part))

    def save(self, part: Part, chunks) -> None:
        tmp = self.path(part) + ".part"
        with open(tmp, "wb") as fh:
            for row0, arrays in chunks:
                np.save(fh, np.array([row0, len(arrays)], np.int64))
                for a in arrays:
                    np.save(fh, a, allow_pickle=False)
        os.replace(tmp, self.path(part))

    def load(self, part: Part):
        """(row0, arrays) of a finished block, one block row at a time."""
        with open(self.path(part), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            while fh.tell() < size:
                row0, n = np.load(fh, allow_pickle=False)
                yield int(row0), [np.load(fh, allow_pickle=False) for _ in range(int(n))]

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
