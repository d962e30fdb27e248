"""Triton Inference Server model repository for a graphs folder.

    REPO/
      vision/   config.pbtxt  1/model.onnx (onnxruntime_onnx) | 1/model.plan (tensorrt_plan) | 1/model.py + model.onnx (python)
      embed/    "
      prefill/  "             (HalfV inside: logits, kept_ivr, kept_ssr, present.{i}.key/value per layer)
      decode/   "             (past.{i}.* each with its own length)
      halfv_vlm/ config.pbtxt  1/model.py  1/halfv_export/ (torch-free copy)  1/graphs/ (manifest, tokenizer[, ONNX])
      README.md

`halfv_vlm` is a Python (BLS) model: IMAGE uint8 [-1,-1,3] + PROMPT string [1] (+ MAX_NEW_TOKENS int32 [1])
-> TEXT string [1], TOKENS int64 [-1], KEPT int64 [3]. With --backend onnxruntime or tensorrt it calls the four
graph models through BLS requests (mode `bls`); with --backend python it runs VlmPipeline in-process over its own
graphs/ copy by default (mode `local`, no tensor copies between models), while the four graph models stay
servable on their own; `vlm_mode="bls"` makes it call them instead (what the tests use to run the BLS code).

The runtime code reaches the Python backend stub by copy, not PYTHONPATH: halfv_vlm/1/halfv_export/ holds the
package's torch-free files taken from the installed package (editable or not), and model.py puts its own folder
first on sys.path. Third-party modules (numpy, onnxruntime, pillow, tokenizers) must be importable by the
stub's Python; `halfv-export serve` points PYTHONPATH at the running interpreter's site-packages.

Configs are built as tritonclient's ModelConfig protos, written as text, parsed back and checked against the
manifest (names, dtypes, ranks, fixed dims; symbolic dims are -1); max_batch_size is 0 because every graph
carries its batch dimension explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.errors import UserError
from ..core.fileio import atomic_dir
from ..core.manifest import MANIFEST_NAME, ROLES, Manifest

BACKENDS = ("onnxruntime", "tensorrt", "python")
VLM_MODEL = "halfv_vlm"
MODELS_DIR = Path(__file__).parent / "triton_models"
# halfv_export files the Python models import (everything else in the package needs torch)
RUNTIME_PACKAGES = ("core", "runtime")  # the torch-free layers the halfv_vlm stub imports
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
          "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UserError(f"tritonclient[grpc] is needed for Triton configs ({exc}); "
                        f"pip install -c constraints.txt 'tritonclient[http,grpc]'") from None
    return model_config_pb2, text_format


# -- configs ----------------------------------------------------------------------------------------------
def config_dims(shape: list) -> list[int]:
    """Manifest shape -> Triton dims: fixed ints stay, symbolic names (and expressions) become -1."""
    return [d if isinstance(d, int) else -1 for d in shape]


def _tensor(message, entry: dict, pb) -> None:
    message.name = entry["name"]
    if entry["dtype"] not in DTYPES:
        raise UserError(f"tensor {entry['name']}: dtype {entry['dtype']} has no Triton type")
    message.data_type = pb.DataType.Value(DTYPES[entry["dtype"]])
    message.dims.extend(config_dims(entry["shape"]))


def _parameter(config, key: str, value) -> None:
    config.parameters[key].string_value = str(value)


def role_config(name: str, entry: dict, kind: str, threads: int = 0):
    """Config for one graph; kind is onnxruntime | tensorrt | python."""
    pb, _ = _pb()
    config = pb.ModelConfig(name=name, max_batch_size=0)
    if kind == "onnxruntime":
        config.platform, config.backend, config.default_model_filename = "onnxruntime_onnx", "onnxruntime", "model.onnx"
    elif kind == "tensorrt":
        config.platform, config.backend, config.default_model_filename = "tensorrt_plan", "tensorrt", "model.plan"
    else:
        config.backend = "python"
        if threads:
            _parameter(config, "intra_op_threads", threads)
    for item in entry["inputs"]:
        _tensor(config.input.add(), item, pb)
    for item in entry["outputs"]:
        _tensor(config.output.add(), item, pb)
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_GPU if kind == "tensorrt"
                              else pb.ModelInstanceGroup.KIND_CPU)
    return config


def vlm_config(mode: str, models: dict, max_image_pixels: int, instances: int, threads: int,
               default_max_new_tokens: int = 32, max_new_tokens_limit: int = 1024):
    pb, _ = _pb()
    config = pb.ModelConfig(name=VLM_MODEL, backend="python", max_batch_size=0)
    config.input.add(name="IMAGE", data_type=pb.TYPE_UINT8, dims=[-1, -1, 3])
    config.input.add(name="PROMPT", data_type=pb.TYPE_STRING, dims=[1])
    config.input.add(name="MAX_NEW_TOKENS", data_type=pb.TYPE_INT32, dims=[1], optional=True)
    config.output.add(name="TEXT", data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(name="TOKENS", data_type=pb.TYPE_INT64, dims=[-1])
    config.output.add(name="KEPT", data_type=pb.TYPE_INT64, dims=[3])
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    _parameter(config, "mode", mode)
    _parameter(config, "max_image_pixels", max_image_pixels)
    _parameter(config, "default_max_new_tokens", default_max_new_tokens)
    _parameter(config, "max_new_tokens_limit", max_new_tokens_limit)
    if threads:
        _parameter(config, "intra_op_threads", threads)
    if mode == "bls":
        _parameter(config, "models", json.dumps(models, sort_keys=True))
    return config


def config_text(config) -> str:
    _, text_format = _pb()
    return f"# written by halfv-export; tritonclient model_config.proto text format\n" \
           f"{text_format.MessageToString(config)}"


def parse_config(text: str):
    """config.pbtxt text -> ModelConfig (raises text_format.ParseError on anything the proto does not know)."""
    pb, text_format = _pb()
    return text_format.Parse(text, pb.ModelConfig())


def config_problems(config, entry: dict) -> list[str]:
    """How a parsed config differs from a manifest graph entry (names, dtypes, ranks, fixed dims)."""
    pb, _ = _pb()
    problems = []
    for side, tensors, expected in (("input", config.input, entry["inputs"]),
                                    ("output", config.output, entry["outputs"])):
        have = {t.name: t for t in tensors}
        if list(have) != [e["name"] for e in expected]:
            problems.append(f"{side} names {list(have)} != manifest {[e['name'] for e in expected]}")
            continue
        for e in expected:
            t = have[e["name"]]
            dtype = pb.DataType.Name(t.data_type)
            if dtype != DTYPES.get(e["dtype"]):
                problems.append(f"{side} {e['name']}: {dtype} != manifest {e['dtype']}")
            if list(t.dims) != config_dims(e["shape"]):
                problems.append(f"{side} {e['name']}: dims {list(t.dims)} != manifest {e['shape']}")
    return problems


# -- repository ---------------------------------------------------------------------------------------------
def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (the python repository holds each ONNX file twice), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_runtime(dest: Path) -> None:
    """The torch-free part of the installed halfv_export package, for the backend stub to import."""
    package = Path(__file__).resolve().parent.parent
    out = dest / "halfv_export"
    out.mkdir(parents=True)
    shutil.copy2(package / "__init__.py", out / "__init__.py")
    for sub in RUNTIME_PACKAGES:
        for file in sorted((package / sub).rglob("*.py")):
            target = out / file.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def trt_roles(manifest: Manifest, engines_dir) -> tuple[tuple[str, ...], dict]:
    """Roles served from TensorRT plans: those `halfv-export engine` builds (its build.json when given)."""
    if engines_dir is not None:
        from ..engines.builder import load_build

        build = load_build(engines_dir)
        if build.get("model") != manifest.get("model"):
            raise UserError(f"{engines_dir} holds engines for {build.get('model')!r}, not {manifest.get('model')!r}")
        return tuple(r for r in ROLES if r in build["engines"]), build
    from ..engines import profiles as prof

    ranges = prof.make_ranges(manifest, None, None, prof.DEFAULT_MAX_TEXT, prof.DEFAULT_MAX_NEW_TOKENS, 1)
    profiles, _ = prof.engine_profiles(manifest, ranges)
    return tuple(r for r in ROLES if r in profiles), {}


def make_repository(graphs_dir, out, backend: str = "onnxruntime", *, engines_dir=None, vlm_mode: str | None = None,
                    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, instances: int = 1, threads: int = 0) -> dict:
    """Write the repository atomically; returns a summary {models: {name: kind}, mode, files}."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    mode = vlm_mode or ("local" if backend == "python" else "bls")
    if mode not in ("local", "bls"):
        raise UserError(f"vlm mode must be local or bls, got {mode!r}")
    if mode == "local" and backend != "python":
        raise UserError("halfv_vlm can run the graphs in-process only with --backend python")
    if engines_dir is not None and backend != "tensorrt":
        raise UserError("--engines goes with --backend tensorrt")
    if max_image_pixels < 1 or instances < 1 or threads < 0:
        raise UserError("max_image_pixels and instances must be >= 1, threads >= 0")
    manifest = Manifest.load(graphs_dir, verify=True)
    for role in ROLES:
        manifest.graph(role)  # UserError naming the missing graph
    kinds = {role: backend for role in ROLES}
    build = {}
    if backend == "tensorrt":
        served, build = trt_roles(manifest, engines_dir)
        # a graph the engine command does not build yet stays on ONNX Runtime (CPU)
        kinds = {role: "tensorrt" if role in served else "onnxruntime" for role in ROLES}
    out = Path(out)
    if out.resolve() == manifest.folder.resolve() or manifest.folder.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} must not be inside the graphs folder {manifest.folder}")
    if out.exists() and not (out / VLM_MODEL / "config.pbtxt").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not a halfv-export Triton repository: remove it or choose another")
    models = {role: role for role in ROLES}
    with atomic_dir(out) as tmp:
        for role in ROLES:
            entry, kind = manifest.graph(role), kinds[role]
            version = tmp / role / "1"
            version.mkdir(parents=True)
            if kind == "tensorrt":
                if build:
                    shutil.copy2(Path(engines_dir) / build["engines"][role]["file"], version / "model.plan")
            else:
                _link_or_copy(manifest.path(role), version / "model.onnx")
                if entry.get("data"):  # external data keeps the name the ONNX file refers to
                    _link_or_copy(manifest.folder / entry["data"], version / entry["data"])
                if kind == "python":
                    shutil.copy2(MODELS_DIR / "role_model.py", version / "model.py")
            _write_config(tmp / role, role_config(role, entry, kind, threads), entry)
        version = tmp / VLM_MODEL / "1"
        version.mkdir(parents=True)
        shutil.copy2(MODELS_DIR / "halfv_vlm.py", version / "model.py")
        copy_runtime(version)
        _copy_graphs(manifest, version / "graphs", with_onnx=mode == "local")
        _write_config(tmp / VLM_MODEL, vlm_config(mode, models, max_image_pixels, instances, threads), None)
        (tmp / "README.md").write_text(readme(manifest, backend, kinds, mode, bool(build), max_image_pixels))
    return {"models": {**kinds, VLM_MODEL: f"python ({mode})"}, "mode": mode, "out": str(out),
            "plans_copied": bool(build)}


def _write_config(folder: Path, config, entry: dict | None) -> None:
    text = config_text(config)
    parsed = parse_config(text)
    problems = config_problems(parsed, entry) if entry is not None else []
    if parsed != config or problems:  # a generator bug, not the user's
        raise RuntimeError(f"{folder.name}/config.pbtxt does not round-trip or match the manifest: {problems}")
    (folder / "config.pbtxt").write_text(text)


def _copy_graphs(manifest: Manifest, dest: Path, with_onnx: bool) -> None:
    """The graphs folder for halfv_vlm: manifest and tokenizer files, plus the ONNX files in local mode."""
    graph_files = {name for entry in manifest["graphs"].values() for name in entry.get("sha256", {})}
    graph_files |= {entry.get("data") for entry in manifest["graphs"].values() if entry.get("data")}
    dest.mkdir()
    for file in sorted(manifest.folder.iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        if file.name in graph_files and not with_onnx:
            continue
        _link_or_copy(file, dest / file.name)
    if not (dest / MANIFEST_NAME).is_file():
        raise UserError(f"{manifest.folder}: {MANIFEST_NAME} vanished while copying")


def readme(manifest: Manifest, backend: str, kinds: dict, mode: str, plans_copied: bool, max_pixels: int) -> str:
    rows = "\n".join(f"| {role} | {kind} | {_file(kind)} |" for role, kind in kinds.items())
    trt = [role for role, kind in kinds.items() if kind == "tensorrt"]
    steps = ""
    if trt and not plans_copied:
        steps = ("\nThe TensorRT plans are not in this repository yet: build them on the serving GPU and copy them in\n\n"
                 "```\nhalfv-export engine --graphs GRAPHS --out ENGINES\n"
                 + "".join(f"cp ENGINES/{role}.plan REPO/{role}/1/model.plan\n" for role in trt) + "```\n"
                 "(or run `halfv-export triton --backend tensorrt --engines ENGINES` again).\n")
    how = ("runs the whole pipeline in its own process over `halfv_vlm/1/graphs/` (the graph models above stay "
           "servable on their own)" if mode == "local" else
           "calls the four graph models through BLS requests for every step")
    return f"""# Triton model repository: {manifest.get('model')} with HalfV

Written by `halfv-export triton --backend {backend}` from a graphs folder (opset {manifest.get('opset')},
{manifest.get('dtype')}). Every config.pbtxt parses into tritonclient's `ModelConfig`; `max_batch_size: 0`
because each graph carries its batch dimension; symbolic dimensions are -1.

| model | backend | file |
|---|---|---|
{rows}
| halfv_vlm | python ({mode}) | model.py |
{steps}
`halfv_vlm` {how}: preprocessing, the vision graph, the chat template, the prefill with HalfV
inside and greedy decoding over the per-layer (ragged) KV cache.

- inputs: `IMAGE` uint8 [height, width, 3] (at most {max_pixels} pixels), `PROMPT` string [1],
  optional `MAX_NEW_TOKENS` int32 [1]
- outputs: `TEXT` string [1], `TOKENS` int64 [n] (generated ids), `KEPT` int64 [3]
  (visual tokens, kept after IVR, kept after SSR)

The Python models need numpy, onnxruntime, pillow and tokenizers in the backend stub's Python; the
halfv-export code they import is copied into `halfv_vlm/1/halfv_export/`.

```
tritonserver --model-repository REPO
python -c "from halfv_export.deploy.serve import ask; import numpy as np; \\
print(ask('127.0.0.1:8000', np.zeros((112, 112, 3), np.uint8), 'What is shown?').text)"
```
`halfv-export serve --graphs GRAPHS` generates a python-backend repository and starts the server bundled
with nvidia-pytriton (library paths handled).
"""


def _file(kind: str) -> str:
    return {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py + model.onnx"}[kind]
