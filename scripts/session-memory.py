"""Memory of a graphs folder's decoder sessions, one step at a time: where `run`'s resident memory goes.

    python scripts/session-memory.py GRAPHS [shared|share-all|none]

shared (what the runtime does): the manifest's shared_initializers are handed to every session as one
mapped copy; share-all: every external initializer, quantized codes too (prepacking stays on for a
quantized folder); none: each session maps the data file itself. Prints VmHWM, RssAnon and RssFile (MB)
after each session loads, after a prefill (60 text + 256 visual tokens) and after three decode steps.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import onnx

from halfv_export.bench import decode_feeds, prompt_feeds
from halfv_export.core.manifest import Manifest
from halfv_export.runtime.pipeline import make_session
from halfv_export.runtime.weights import SharedWeights


def memory(tag: str) -> None:
    fields = {line.split(":")[0]: int(line.split()[1]) // 1000 for line in open("/proc/self/status")
              if line.startswith(("VmHWM", "RssAnon", "RssFile"))}
    print(f"{tag:14} " + "  ".join(f"{k} {v} MB" for k, v in fields.items()), flush=True)


def main() -> int:
    folder, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "shared")
    manifest = Manifest.load(folder, verify=False)
    if mode == "share-all":
        for role in ("embed", "prefill", "decode"):
            model = onnx.load(str(manifest.path(role)), load_external_data=False)
            manifest["graphs"][role]["shared_initializers"] = [
                i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    shared = SharedWeights(manifest) if mode != "none" else None
    memory("start")
    sessions = {}
    for role in ("embed", "prefill", "decode"):
        sessions[role] = make_session(manifest.path(role), 2, shared.for_graph(manifest.graph(role)) if shared else None,
                                      manifest.get("quantization"))
        memory(role)
    config = manifest["config"]
    bb = SimpleNamespace(image_token_id=config["image_token_id"], position_rows=config["position_rows"],
                         hidden_size=config["hidden_size"], num_layers=config["num_layers"])
    feeds, next_position = prompt_feeds(bb, 60, 256, 0)
    began = time.perf_counter()
    names = [o.name for o in sessions["prefill"].get_outputs()]
    outputs = dict(zip(names, sessions["prefill"].run(None, feeds)))
    print(f"prefill {time.perf_counter() - began:.1f} s")
    memory("after prefill")
    step = decode_feeds(bb, outputs, next_position, 0)
    for _ in range(3):
        began = time.perf_counter()
        sessions["decode"].run(None, step)
        print(f"decode step {time.perf_counter() - began:.2f} s")
    memory("after decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
