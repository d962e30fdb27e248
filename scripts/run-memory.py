"""`run`'s peak memory against its weights (not run by CI): an fp32 export of a Qwen2.5-VL slice of a few
hundred MB (release vocabulary, width 512, 8 layers, random weights), answered by `halfv-export run` in a
subprocess with the sessions sharing one mapped copy of the decoder weights (the default) and, for
comparison, with each session loading and prepacking its own copy. Writes docs/scale/run-memory.json.

    .venv/bin/python scripts/run-memory.py [WORKDIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from halfv_export.backbones.registry import build_random, get_entry
from halfv_export.bench import build_scaled
from halfv_export.core.fileio import write_json
from halfv_export.graphs.export import export_graphs
from halfv_export.core.plan import PruningPlan

MODEL, WIDTH, LAYERS, TOKENS = "qwen2.5-vl-7b", 512, 8, 16
PROBE = """
import json, sys
from halfv_export.core.image import load_image
from halfv_export.runtime.vlm import VlmPipeline
pipeline = VlmPipeline(sys.argv[1], threads=2, share_weights=sys.argv[2] == "shared")
image = load_image(sys.argv[3])
runs = [pipeline.answer(image, "what is in the picture", int(sys.argv[4])).stats for _ in range(3)]
hwm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({"prefill_ms": [round(s["prefill_ms"], 1) for s in runs],
                  "decode_ms_per_token": [round(s["decode_ms_per_token"], 1) for s in runs],
                  # VmHWM: this process image's own peak (ru_maxrss would carry the parent's across exec)
                  "peak_rss_gb": round(hwm_kb / 1e6, 3)}))
"""


def main(work: Path) -> None:
    bb, profile, _, _ = build_scaled(MODEL, WIDTH, LAYERS)
    config = bb.config
    config.text_config.vocab_size = get_entry(MODEL).make_config().text_config.vocab_size  # release ids fit
    bb = build_random(get_entry(MODEL), config=config)
    graphs = work / "graphs"
    manifest = export_graphs(bb, MODEL, graphs, PruningPlan.halfv(profile), profile)
    weight_bytes = manifest["data_files"]["decoder.onnx.data"]["bytes"]
    image = work / "image.png"
    Image.fromarray((np.random.default_rng(0).random((448, 448, 3)) * 255).astype("uint8")).save(image)
    record = {"model": f"{MODEL} at width {WIDTH}, {LAYERS} layers, release vocabulary, random weights, fp32",
              "decoder_weight_bytes": weight_bytes, "new_tokens": TOKENS, "bound_gb":
              round((1.15 * weight_bytes + 1.5e9) / 1e9, 3), "modes": {}}
    for mode in ("shared", "per-session"):
        out = subprocess.run([sys.executable, "-c", PROBE, str(graphs), mode, str(image), str(TOKENS)],
                             check=True, capture_output=True, text=True).stdout
        record["modes"][mode] = json.loads(out.strip().splitlines()[-1])
    write_json(Path(__file__).resolve().parent.parent / "docs" / "scale" / "run-memory.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as tmp:
        main(Path(tmp))
