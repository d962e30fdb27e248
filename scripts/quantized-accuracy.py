"""Accuracy cost of weight-only quantization where it can be measured: the trained shapes models'
exported HalfV graphs in fp32, int8 and int4 (block sizes 32 and 128), and the unpruned fp32 graphs,
each answering the same test questions through the ONNX Runtime pipeline (`eval --graphs`).

    python scripts/quantized-accuracy.py [--samples 100] [--out docs/scale/quantized-accuracy.json]

Writes the JSON (every figure, per model and configuration) and a PNG next to it in docs/figures/.
Relative accuracy is against the fp32 HalfV graphs and against the unpruned fp32 graphs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from halfv_export.backbones.registry import load_backbone, open_backbone
from halfv_export.core.fileio import write_json
from halfv_export.graphs.export import export_graphs
from halfv_export.graphs.quantize import Quantization
from halfv_export.core.plan import PruningPlan
from halfv_export.core.profile import shipped_profile
from halfv_export.core.versions import library_versions
from halfv_zoo.eval import evaluate_graphs

MODELS = ("shapes-qwen2.5-vl", "shapes-llava")
CONFIGS = {  # label -> (prune, quantization)
    "unpruned fp32": (False, None),
    "fp32": (True, None),
    "int8 b32": (True, Quantization(8, 32)),
    "int4 b32": (True, Quantization(4, 32)),
    "int4 b128": (True, Quantization(4, 128)),
}


def log(line: str) -> None:
    print(f"[quantized-accuracy] {line}", file=sys.stderr, flush=True)


def measure(name: str, samples: int, work: Path) -> dict:
    bb = load_backbone(name)
    profile = shipped_profile(name)
    rows = {}
    for label, (prune, quantization) in CONFIGS.items():
        folder = work / name / label.replace(" ", "-")
        skeleton, weights = open_backbone(name)
        began = time.perf_counter()
        export_graphs(skeleton, name, folder, PruningPlan.halfv(profile) if prune else None,
                      profile if prune else None, weights=weights, quantization=quantization)
        exported = time.perf_counter() - began
        result = evaluate_graphs(bb, name, folder, samples, log)["results"][0]
        data = sum(p.stat().st_size for p in folder.glob("*.data"))
        rows[label] = {"accuracy": result["accuracy"], "agreement_with_float_reference": result["agreement_with_reference"],
                       "float_reference_accuracy": result["reference_accuracy"], "decoder_data_bytes": data,
                       "export_seconds": round(exported, 1), "eval_seconds": result["seconds"]}
        log(f"{name} {label}: accuracy {result['accuracy']:.3f}")
    for row in rows.values():
        row["relative_to_fp32_halfv"] = round(row["accuracy"] / rows["fp32"]["accuracy"], 4)
        row["relative_to_unpruned"] = round(row["accuracy"] / rows["unpruned fp32"]["accuracy"], 4)
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(CONFIGS)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.38
    for i, name in enumerate(result["models"]):
        values = [result["models"][name][label]["accuracy"] for label in labels]
        xs = [x + (i - 0.5) * width for x in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"accuracy ({result['samples']} test questions)")
    ax.set_title("Exported graphs: HalfV with fp32 / int8 / int4 decoder weights")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", default="docs/scale/quantized-accuracy.json")
    parser.add_argument("--figure", default="docs/figures/quantized-accuracy.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="halfv-quant-") as work:
        result = {"samples": args.samples, "models": {name: measure(name, args.samples, Path(work)) for name in MODELS},
                  "versions": library_versions(("halfv-export", "torch", "transformers", "onnx", "onnxruntime"))}
    write_json(args.out, result)
    plot(result, Path(args.figure))
    for name, rows in result["models"].items():
        for label, row in rows.items():
            print(f"{name:18} {label:14} accuracy {row['accuracy']:.3f}  vs fp32 HalfV {row['relative_to_fp32_halfv']:.3f}"
                  f"  vs unpruned {row['relative_to_unpruned']:.3f}  agreement {row['agreement_with_float_reference']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
