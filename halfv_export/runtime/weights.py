"""One in-memory copy of the decoder weights for every ONNX Runtime session of a graphs folder.

The embed, prefill and decode graphs point into one external data file (graphs/weights.py). Left to
itself, ONNX Runtime maps that file once per session and prepacks each MatMul weight into a private
copy per session, so the decoder weights are held about once per graph. Here the file is mapped once
(numpy memmap, pages shared with the page cache), every listed tensor becomes an OrtValue over its
slice of that map, and each session receives the same OrtValues through add_initializer; prepacking,
which would copy them again per session, is turned off (see docs/architecture.md for the measured
memory and speed).

Torch-free, onnx-free: offsets, dtypes and shapes come from the manifest (data_files[...]["tensors"]),
checked against the file's size before anything is mapped.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

from ..core.errors import UserError
from ..core.manifest import DATA_FILES, Manifest

DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
          "int8": np.int8, "uint8": np.uint8}


class SharedWeights:
    """OrtValues over one memory map per data file, by initializer name; one OrtValue per distinct slice."""

    def __init__(self, manifest: Manifest):
        self.folder = manifest.folder
        self._values: dict[str, ort.OrtValue] = {}
        self._arrays = []  # keeps the mapped slices alive as long as the OrtValues that wrap them
        by_slice = {}
        wanted = {n for g in manifest.get("graphs", {}).values() for n in g.get("shared_initializers") or []}
        for file, entry in (manifest.get(DATA_FILES) or {}).items():
            tensors = {n: info for n, info in (entry.get("tensors") or {}).items() if n in wanted}
            if not tensors:
                continue
            path = self.folder / file
            size = path.stat().st_size
            mapped = np.memmap(path, dtype=np.uint8, mode="r")  # read-only: the file is never written
            for name, info in tensors.items():
                array = self._slice(mapped, size, file, name, info)
                key = (file, int(info["offset"]), int(info["length"]), info["dtype"], tuple(info["shape"]))
                if key not in by_slice:
                    self._arrays.append(array)
                    by_slice[key] = ort.OrtValue.ortvalue_from_numpy(array)
                self._values[name] = by_slice[key]

    @staticmethod
    def _slice(mapped, size: int, file: str, name: str, info: dict) -> np.ndarray:
        try:
            offset, length, shape = int(info["offset"]), int(info["length"]), [int(d) for d in info["shape"]]
            dtype = np.dtype(DTYPES[info["dtype"]])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"manifest: {file} tensor {name!r} has no usable offset/length/dtype/shape") from None
        if offset < 0 or length < 0 or offset + length > size or any(d < 0 for d in shape) \
                or math.prod(shape) * dtype.itemsize != length:
            raise UserError(f"manifest: {file} tensor {name!r} does not fit the file ({offset}+{length} of {size} "
                            f"bytes, shape {shape} {dtype.name})")
        return mapped[offset:offset + length].view(dtype).reshape(shape)

    def for_graph(self, entry: dict) -> dict[str, ort.OrtValue]:
        """The shared OrtValues one graph's session takes (its manifest entry lists their names)."""
        names = entry.get("shared_initializers") or []
        missing = [n for n in names if n not in self._values]
        if missing:
            raise UserError(f"manifest: {entry.get('file')} names shared weights the data files do not list "
                            f"(first: {missing[0]!r})")
        return {n: self._values[n] for n in names}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays)
