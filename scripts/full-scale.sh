#!/usr/bin/env bash
# Full-size rehearsal of a deployment on this machine (not run by CI): a random checkpoint with the
# release architecture -> fp16 export -> graphs folder size -> lint for TensorRT 10 and 11 -> Jetson Orin
# bundle. Every step's wall time and peak RSS go to docs/scale/<model>.json (with the machine and the
# library versions); the README shows the table.
#
#   bash scripts/full-scale.sh [MODEL] [WORKDIR]      defaults: qwen2.5-vl-7b, /work/full-scale
#
# Needs about 3x the fp16 weights of free disk in WORKDIR (checkpoint, graphs; the bundle hard-links).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-vl-7b}
WORK=${2:-/work/full-scale}
HX=.venv/bin/halfv-export
OUT=docs/scale/$MODEL.json
STEPS=$(mktemp -d)
trap 'rm -rf "$STEPS"' EXIT
mkdir -p "$WORK"
rm -rf "$WORK/checkpoint" "$WORK/graphs" "$WORK/bundle"   # this script's own outputs from an earlier run

step() {  # step NAME COMMAND...: run it, record wall seconds, peak RSS (KB) and exit code
  local name=$1; shift
  echo "== $name: $*" >&2
  /usr/bin/time -o "$STEPS/$name.time" -f '{"seconds": %e, "peak_rss_kb": %M, "exit": %x}' "$@"
}

step random_checkpoint $HX random-checkpoint --model "$MODEL" --out "$WORK/checkpoint" --dtype bf16
step export_fp16 $HX export --model "$MODEL" --model-path "$WORK/checkpoint" --dtype fp16 --out "$WORK/graphs"
step lint_trt10 $HX lint --graphs "$WORK/graphs" --target trt10
step lint_trt11 $HX lint --graphs "$WORK/graphs" --target trt11
step bundle_jetson_orin $HX bundle --graphs "$WORK/graphs" --target jetson-orin --out "$WORK/bundle"

.venv/bin/python - "$MODEL" "$WORK" "$STEPS" "$OUT" <<'PY'
import json, os, platform, sys
from pathlib import Path
from halfv_export.fileio import write_json
from halfv_export.versions import library_versions

model, work, steps, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
def folder_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
record = {"model": model, "steps": {}, "files": {}}
for name in ("random_checkpoint", "export_fp16", "lint_trt10", "lint_trt11", "bundle_jetson_orin"):
    entry = json.loads((steps / f"{name}.time").read_text())
    entry["peak_rss_gb"] = round(entry.pop("peak_rss_kb") / 1e6, 2)
    record["steps"][name] = entry
index = json.loads((work / "checkpoint" / "model.safetensors.index.json").read_text())
manifest = json.loads((work / "graphs" / "manifest.json").read_text())
record["weights"] = {"parameters": index["metadata"].get("total_parameters"),
                     "checkpoint_bytes_bf16": folder_bytes(work / "checkpoint"),
                     "fp16_weight_bytes": index["metadata"]["total_size"]}
record["files"] = {p.name: p.stat().st_size for p in sorted((work / "graphs").iterdir())}
record["graphs_bytes"] = folder_bytes(work / "graphs")
record["graphs_over_weights"] = round(record["graphs_bytes"] / record["weights"]["fp16_weight_bytes"], 4)
export_peak = record["steps"]["export_fp16"]["peak_rss_gb"] * 1e9
record["export_peak_over_bound"] = round(export_peak / (0.5 * record["weights"]["fp16_weight_bytes"] + 3e9), 3)
mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
record["machine"] = {"cpus": os.cpu_count(), "memory_gb": round(int(mem) / 1e6, 1), "cpu": cpu,
                     "python": platform.python_version()}
record["versions"] = library_versions(("halfv-export", "torch", "transformers", "onnx", "onnxscript", "onnx-ir",
                                       "onnxruntime", "safetensors"))
write_json(out, record)
print(json.dumps(record, indent=2))
PY
