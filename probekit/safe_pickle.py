"""Reading pickles from files a user downloaded or was given, without running their code.

Some public formats are pickles (CIFAR-10's python batches, object arrays of file names in
.npz files). `pickle.load` would call any function a crafted file names; this unpickler
resolves only the handful of numpy constructors plain arrays need and refuses the rest.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data and numpy arrays are read from pickles)")


def load(file: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """`pickle.load` restricted to containers, strings, numbers and numpy arrays."""
    return _PlainDataUnpickler(file, encoding=encoding).load()


def npz_array(path: str | Path, key: str) -> np.ndarray:
    """`np.load(path)[key]`, object arrays included, without unpickling anything but plain data."""
    from numpy.lib import format as npf

    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as raw:
        fh = io.BufferedReader(raw)
        version = npf.read_magic(fh)
        read_header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if not dtype.hasobject:
            data = np.frombuffer(fh.read(), dtype=dtype, count=int(np.prod(shape)))
            return data.reshape(shape, order="F" if fortran else "C")
        return np.asarray(load(fh, encoding="latin1"))
