#!/usr/bin/env bash
# Full-size rehearsal of a deployment on this machine (not run by CI). Every step's wall time and peak RSS
# go to docs/scale/<model>.json (with the machine and the library versions); the README shows the table.
#
#   bash scripts/full-scale.sh [MODEL] [WORKDIR] [PHASES]   defaults: qwen2.5-vl-7b, /work/full-scale, "fp16 int4"
#   (PHASES "report" rewrites the JSON from the steps recorded in WORKDIR/steps)
#
#   checkpoint  a random checkpoint with the release architecture (written unless WORKDIR has one)
#   fp16        export fp16 -> graphs folder size -> lint for TensorRT 10 and 11 -> Jetson Orin bundle
#   int4        export int4 (HalfV, and the unpruned prefill for the benchmark) -> check against the
#               streamed reference with the same dequantized weights (batch 1, two visual counts) ->
#               `run` on a 448x448 image -> prefill HalfV vs unpruned at N = 1024, 2048 and decode steps
#               (scripts/bench-graphs.py)
# A phase's steps replace that phase's figures in the JSON; the others' stay as they were measured.
# Needs about 3x the fp16 weights of free disk in WORKDIR (checkpoint, graphs; the bundle hard-links).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-vl-7b}
WORK=${2:-/work/full-scale}
PHASES=${3:-fp16 int4}
HX=.venv/bin/halfv-export
PY=.venv/bin/python
OUT=docs/scale/$MODEL.json
STEPS=$WORK/steps   # one <step>.time per step run (kept: a later phase's run adds to them)
mkdir -p "$WORK" "$STEPS"

step() {  # step NAME COMMAND...: run it, record wall seconds, peak RSS (KB) and exit code (kept going)
  local name=$1; shift
  echo "== $name: $*" >&2
  /usr/bin/time -o "$STEPS/$name.time" -f '{"seconds": %e, "peak_rss_kb": %M, "exit": %x}' "$@" \
    || echo "== $name failed (exit $?)" >&2
}

if [ ! -f "$WORK/checkpoint/model.safetensors.index.json" ]; then
  rm -rf "$WORK/checkpoint"
  step random_checkpoint $HX random-checkpoint --model "$MODEL" --out "$WORK/checkpoint" --dtype bf16
fi
CK=$WORK/checkpoint

for phase in $PHASES; do
  case $phase in
  fp16)
    rm -rf "$WORK/graphs" "$WORK/bundle"   # this script's own outputs from an earlier run
    step export_fp16 $HX export --model "$MODEL" --model-path "$CK" --dtype fp16 --out "$WORK/graphs"
    step lint_trt10 $HX lint --graphs "$WORK/graphs" --target trt10
    step lint_trt11 $HX lint --graphs "$WORK/graphs" --target trt11
    step bundle_jetson_orin $HX bundle --graphs "$WORK/graphs" --target jetson-orin --out "$WORK/bundle"
    ;;
  int4)
    rm -rf "$WORK/graphs-int4" "$WORK/prefill-int4-unpruned"
    step export_int4 $HX export --model "$MODEL" --model-path "$CK" --weights int4 --out "$WORK/graphs-int4"
    step export_int4_unpruned_prefill $HX export --model "$MODEL" --model-path "$CK" --weights int4 --no-prune \
      --roles prefill --out "$WORK/prefill-int4-unpruned"
    step check_int4 $HX check --graphs "$WORK/graphs-int4" --model-path "$CK" --max-batch 1 --new-tokens 4 \
      --report "$WORK/check-int4.json"
    $PY -c "from PIL import Image, ImageDraw; im = Image.new('RGB', (448, 448), 'white'); d = ImageDraw.Draw(im)
d.ellipse((60, 60, 220, 220), fill='red'); d.rectangle((250, 240, 400, 400), fill='blue'); im.save('$WORK/image.png')"
    step run_int4 $HX run --graphs "$WORK/graphs-int4" --image "$WORK/image.png" --prompt "What shapes are there?" \
      --max-new-tokens 8 --stats
    step bench_int4 $PY scripts/bench-graphs.py --halfv "$WORK/graphs-int4" --unpruned "$WORK/prefill-int4-unpruned" \
      --model-path "$CK" --visual-tokens 1024,2048 --repeats 1 --out "$WORK/bench-int4.json"
    ;;
  report) ;;  # only rewrite the JSON from the recorded steps
  *) echo "unknown phase $phase (fp16, int4, report)" >&2; exit 2 ;;
  esac
done

$PY - "$MODEL" "$WORK" "$STEPS" "$OUT" <<'PY'
import json, os, platform, sys
from pathlib import Path
from halfv_export.fileio import write_json
from halfv_export.versions import library_versions

model, work, steps, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
def folder_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
record = json.loads(Path(out).read_text()) if Path(out).is_file() else {"model": model, "steps": {}}
for path in sorted(steps.glob("*.time")):
    entry = json.loads(path.read_text().strip().splitlines()[-1])  # time writes a line first on failure
    entry["peak_rss_gb"] = round(entry.pop("peak_rss_kb") / 1e6, 2)
    record["steps"][path.stem] = entry
index = json.loads((work / "checkpoint" / "model.safetensors.index.json").read_text())
record["weights"] = {"parameters": index["metadata"].get("total_parameters"),
                     "checkpoint_bytes_bf16": folder_bytes(work / "checkpoint"),
                     "fp16_weight_bytes": index["metadata"]["total_size"]}
fp16_bytes = record["weights"]["fp16_weight_bytes"]
if (steps / "export_fp16.time").is_file():
    record["files"] = {p.name: p.stat().st_size for p in sorted((work / "graphs").iterdir())}
    record["graphs_bytes"] = folder_bytes(work / "graphs")
    record["graphs_over_weights"] = round(record["graphs_bytes"] / fp16_bytes, 4)
    export_peak = record["steps"]["export_fp16"]["peak_rss_gb"] * 1e9
    record["export_peak_over_bound"] = round(export_peak / (0.5 * fp16_bytes + 3e9), 3)
if (steps / "export_int4.time").is_file():
    check = json.loads((work / "check-int4.json").read_text())
    bench = json.loads((work / "bench-int4.json").read_text())
    run_peak = record["steps"]["run_int4"]["peak_rss_gb"] * 1e9
    record["int4"] = {
        "files": {p.name: p.stat().st_size for p in sorted((work / "graphs-int4").iterdir())},
        "graphs_bytes": folder_bytes(work / "graphs-int4"),
        "graphs_over_fp16_weights": round(folder_bytes(work / "graphs-int4") / fp16_bytes, 4),
        "check": {"passed": all(c["passed"] for c in check["comparisons"]), "comparisons": len(check["comparisons"]),
                  "max_logits_diff": max((c["max_abs_diff"] or 0) for c in check["comparisons"]
                                         if c["output"] == "logits")},
        "run_peak_over_target": round(run_peak / (0.35 * fp16_bytes + 3e9), 3),
        "bench": bench,
    }
mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
record["machine"] = {"cpus": os.cpu_count(), "memory_gb": round(int(mem) / 1e6, 1), "cpu": cpu,
                     "python": platform.python_version()}
record["versions"] = library_versions(("halfv-export", "torch", "transformers", "onnx", "onnxscript", "onnx-ir",
                                       "onnxruntime", "safetensors"))
write_json(out, record)
print(json.dumps(record, indent=2))
PY
