"""The graphs/engines manifest: what files a folder holds, their I/O with symbolic dims, and checksums.

Torch-free: the runtime, Triton models and Jetson bundles read it.

{
  "schema_version": 1, "kind": "graphs",
  "model": "tiny-qwen2.5-vl", "backbone": "qwen2_5_vl",
  "profile": {...Profile.to_dict()} | null (--no-prune), "coverage": "fps" | "oneshot" | null,
  "opset": 20, "dtype": "fp32",
  "config": {"num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
             "image_token_id", "position_rows" (3 Qwen M-RoPE | 1), "eos_token_id", ...},
  "visual_tokens": {"min": int, "opt": int, "max": int},   # range the graphs are meant for
  "graphs": {"<role>": {"file": "prefill.onnx", "data": "decoder.onnx.data" | null, "sha256": {file: hex},
                        "inputs": [{"name", "dtype", "shape": [int | "dim_name"]}], "outputs": [...]}},
  "data_files": {"decoder.onnx.data": {"sha256": hex, "bytes": int}},   # shared weights, hashed once
  "versions": {"halfv_export", "torch", "transformers", "onnx", ...}
}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import UserError
from .fileio import read_json_object, write_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DATA_FILES = "data_files"  # weights shared by several graphs: one file, one hash

# The per-layer KV cache tensors of the graphs: prefill and decode output present.{i}.key/value, decode takes
# the previous step's as past.{i}.key/value. Every module that feeds or reads them spells them here.
# The graphs a folder can hold, in pipeline order; the decoder roles share decoder.onnx.data.
ROLES = ("vision", "embed", "prefill", "decode")
DECODER_ROLES = ROLES[1:]
INDEX_OUTPUTS = ("kept_ivr", "kept_ssr")  # prefill outputs: the visual rows kept at IVR and at SSR
CACHE_PARTS = ("key", "value")
PRESENT_PREFIX = "present."
PAST_PREFIX = "past."


def present_name(layer: int, part: str) -> str:
    return f"{PRESENT_PREFIX}{layer}.{part}"


def past_name(layer: int, part: str) -> str:
    return f"{PAST_PREFIX}{layer}.{part}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest(dict):
    """A manifest.json as a dict, with its folder, validation and checksum verification."""

    def __init__(self, data: dict, folder: str | os.PathLike):
        super().__init__(data)
        self.folder = Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, verify: bool = True) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise UserError(f"graphs folder not found: {folder}")
        data = read_json_object(path, f"{folder} has no {MANIFEST_NAME}: not a halfv-export graphs folder")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"{path}: unsupported manifest (schema_version {data.get('schema_version')!r})")
        manifest = cls(data, folder)
        if verify:
            manifest.verify()
        return manifest

    def save(self) -> None:
        write_json(self.folder / MANIFEST_NAME, dict(self))

    def graph(self, role: str) -> dict:
        try:
            return self["graphs"][role]
        except KeyError:
            raise UserError(f"{self.folder}: manifest has no {role!r} graph") from None

    def path(self, role: str) -> Path:
        return self.folder / self.graph(role)["file"]

    def files(self) -> dict[str, str]:
        """Every file the graphs need -> its sha256: each graph's own files and the shared data files, once."""
        files = {}
        for entry in self.get("graphs", {}).values():
            files.update(entry.get("sha256", {}))
        for name, entry in (self.get(DATA_FILES) or {}).items():
            files[name] = entry["sha256"]
        return files

    def verify(self) -> None:
        """Every listed file exists and matches its sha256 (a shared data file is hashed once)."""
        for name, expected in self.files().items():
            path = self.folder / name
            if not path.is_file():
                raise UserError(f"{self.folder}: graph file {name} is missing")
            if sha256_file(path) != expected:
                raise UserError(f"{self.folder}: {name} does not match its sha256 in {MANIFEST_NAME} "
                                f"(modified or corrupt; export again)")

    def check_model(self, model: str) -> None:
        if self.get("model") != model:
            raise UserError(f"{self.folder} holds graphs for {self.get('model')!r}, not {model!r}")
