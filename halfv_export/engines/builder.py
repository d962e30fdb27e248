"""TensorRT engines for a graphs folder, one per graph, built with Polygraphy's TensorRT API.

    graphs/<model>/ --lint for the installed TensorRT--> refuse on any error
                    --profiles.py--> one optimization profile per graph (min/opt/max of every input)
                    --network_from_onnx_path + CreateConfig + engine_bytes_from_network-->
    engines/<model>/{embed,prefill,decode}.plan + timing.cache + build.json   (written atomically)

TensorRT is imported lazily: nothing else in halfv-export needs it, and it cannot be installed on
machines without NVIDIA's package index. Versions:
  TensorRT 10  weakly typed network, fp16 builder flag on (fp32 graphs may run fp16 kernels)
  TensorRT 11  strongly typed network only: precision is the ONNX's (there is no fp16 flag)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from ..core.errors import UserError
from ..core.fileio import atomic_dir, atomic_path, write_json
from ..core.lint import lint_manifest
from ..core.manifest import MANIFEST_NAME, Manifest, sha256_file
from ..core.versions import library_versions
from . import profiles as prof

BUILD_NAME = "build.json"
TIMING_CACHE_NAME = "timing.cache"


def import_tensorrt():
    """The tensorrt module, or one UserError line saying why it cannot be used here."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError from a bindings wheel without its libraries
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"TensorRT is not importable here: {first} (build engines on a machine with TensorRT "
                        f"10/11, e.g. from a `halfv-export bundle` on a Jetson)") from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except UserError:
        return False
    return True


def build_settings(trt_version: str) -> dict:
    """Lint target and builder flags for an installed TensorRT version string."""
    try:
        major = int(trt_version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {trt_version!r}") from None
    if major >= 11:
        return {"target": "trt11", "strongly_typed": True, "fp16": False}
    if major == 10:
        return {"target": "trt10", "strongly_typed": False, "fp16": True}
    raise UserError(f"TensorRT {trt_version} is too old: halfv-export builds with TensorRT 10 or 11 "
                    f"(dynamic TopK K and INT64 need 10)")


def gpu_name() -> str:
    """The GPU this engine is tied to (nvidia-smi on dGPUs, the device-tree model on Jetson)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
        if out:
            return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    model = Path("/proc/device-tree/model")
    if model.is_file():
        return model.read_text(errors="replace").strip("\x00\n ")
    return "unknown"


def lint_or_refuse(manifest: Manifest, target: str) -> dict:
    report = lint_manifest(manifest, target)
    if not report.ok:
        raise UserError(f"{len(report.errors)} {target} lint error(s), first: {report.errors[0].line()} "
                        f"(see `halfv-export lint --graphs {manifest.folder} --target {target}`)")
    return {"target": target, "errors": 0, "warnings": len(report.warnings)}


def default_engines_dir(manifest: Manifest) -> Path:
    return Path("engines") / manifest["model"]


def build_engines(graphs_dir, out_dir=None, min_pixels: int | None = None, max_pixels: int | None = None,
                  max_text: int = prof.DEFAULT_MAX_TEXT, max_new_tokens: int = prof.DEFAULT_MAX_NEW_TOKENS,
                  max_batch: int = 1, timing_cache=None, progress: Callable[[str], None] | None = None) -> dict:
    """Build one engine per profiled graph; returns the build record (also written as build.json)."""
    say = progress or (lambda line: None)
    manifest = Manifest.load(graphs_dir)
    ranges = prof.make_ranges(manifest, min_pixels, max_pixels, max_text, max_new_tokens, max_batch)
    profiles, skipped = prof.engine_profiles(manifest, ranges)
    trt = import_tensorrt()
    settings = build_settings(trt.__version__)
    lint = lint_or_refuse(manifest, settings["target"])

    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    out_dir = Path(out_dir) if out_dir is not None else default_engines_dir(manifest)
    cache_src = Path(timing_cache) if timing_cache else None
    engines = {}
    with atomic_dir(out_dir) as tmp:
        cache = tmp / TIMING_CACHE_NAME
        cache_loaded = bool(cache_src and cache_src.is_file())
        if cache_loaded:
            shutil.copyfile(cache_src, cache)
        for role, shapes in profiles.items():
            onnx_path = manifest.path(role)
            profile = Profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.add(name, lo, opt, hi)
            config = CreateConfig(fp16=settings["fp16"], profiles=[profile],
                                  load_timing_cache=str(cache) if cache.is_file() else None)
            say(f"[engine] {role}: building from {onnx_path.name} ({settings['target']}, "
                f"{'strongly typed' if settings['strongly_typed'] else 'fp16 flag'})")
            start = time.perf_counter()
            network = network_from_onnx_path(str(onnx_path), strongly_typed=settings["strongly_typed"])
            engine = engine_bytes_from_network(network, config, save_timing_cache=str(cache))
            seconds = round(time.perf_counter() - start, 1)
            file = f"{role}.plan"
            (tmp / file).write_bytes(engine)
            engines[role] = {"file": file, "onnx": onnx_path.name, "sha256": sha256_file(tmp / file),
                             "bytes": len(engine), "build_seconds": seconds,
                             "profile": prof.profile_dict(shapes)}
            say(f"[engine] {role}: {len(engine) / 2**20:.1f} MiB in {seconds:.1f} s")
        record = {
            "schema_version": 1, "kind": "engines", "model": manifest["model"],
            "graphs_dir": str(Path(graphs_dir).resolve()),
            "graphs_manifest_sha256": sha256_file(manifest.folder / MANIFEST_NAME),
            "dtype": manifest.get("dtype"), "tensorrt": trt.__version__, "gpu": gpu_name(), **settings,
            "ranges": prof.ranges_dict(ranges), "engines": engines, "skipped": skipped, "lint": lint,
            "timing_cache": {"file": TIMING_CACHE_NAME, "loaded_from": str(cache_src) if cache_loaded else None},
            "total_build_seconds": round(sum(e["build_seconds"] for e in engines.values()), 1),
            "versions": {**library_versions(("halfv-export", "polygraphy")), "tensorrt": trt.__version__},
        }
        write_json(tmp / BUILD_NAME, record)
        if cache_src is not None and cache.is_file():  # hand the grown cache back for the next build
            with atomic_path(cache_src) as cache_tmp:
                shutil.copyfile(cache, cache_tmp)
    say(f"[engine] wrote {out_dir} ({', '.join(e['file'] for e in engines.values())}, {BUILD_NAME})")
    return record


def load_build(engines_dir) -> dict:
    path = Path(engines_dir) / BUILD_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{engines_dir} has no {BUILD_NAME}: not a halfv-export engines folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def engine_path(engines_dir, build: dict, role: str) -> Path:
    try:
        path = Path(engines_dir) / build["engines"][role]["file"]
    except KeyError:
        raise UserError(f"{engines_dir}: no {role} engine in {BUILD_NAME}") from None
    if not path.is_file() or sha256_file(path) != build["engines"][role]["sha256"]:
        raise UserError(f"{path} is missing or does not match its sha256 in {BUILD_NAME}")
    return path

