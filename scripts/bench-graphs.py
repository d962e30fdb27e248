"""Prefill latency of two exported graphs folders of one model (HalfV and unpruned), and decode steps
over each one's cache: the full-size benchmark (scripts/full-scale.sh), where `halfv-export bench`'s
scaled models would not show the real shapes. ONNX Runtime CPU, the folders' own graphs.

    python scripts/bench-graphs.py --halfv G1 --unpruned G2 --visual-tokens 1024,2048 --repeats 1 \
        --model-path CKPT --out X.json

Per N: one warm-up run of each prefill, then R rounds in rotated order (bench.time_interleaved); the
speedup is the median per-round ratio. Decode: D steps over each prefill's cache at the first N.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

from halfv_export.bench import (DECODE_REPEAT_FACTOR, decode_feeds, paired_ratio, prompt_feeds, summarize,
                                time_interleaved)
from halfv_export.core.fileio import write_json
from halfv_export.core.flops import DecoderDims, speedup_table
from halfv_export.core.manifest import Manifest, present_name
from halfv_export.core.profile import Profile
from halfv_export.runtime.pipeline import make_session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--halfv", required=True)
    parser.add_argument("--unpruned", required=True)
    parser.add_argument("--visual-tokens", default="1024,2048")
    parser.add_argument("--text-tokens", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model-path", default=None, help="the checkpoint (its config feeds the FLOPs model; "
                        "default: the model's built-in config)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    halfv, unpruned = Manifest.load(args.halfv, verify=False), Manifest.load(args.unpruned, verify=False)
    config = halfv["config"]
    bb = SimpleNamespace(image_token_id=config["image_token_id"], position_rows=config["position_rows"],
                         hidden_size=config["hidden_size"], num_layers=config["num_layers"])
    profile = Profile.from_dict(halfv["profile"])
    sessions = {name: make_session(m.path("prefill"), args.threads, quantization=m.get("quantization"))
                for name, m in (("unpruned", unpruned), ("halfv", halfv))}
    counts = [int(n) for n in args.visual_tokens.split(",")]
    result = {"halfv": str(args.halfv), "unpruned": str(args.unpruned), "text_tokens": args.text_tokens,
              "repeats": args.repeats, "quantization": {k: v for k, v in (halfv.get("quantization") or {}).items()
                                                        if k != "weights"},
              "prefill": [], "decode": None}
    first_outputs = None
    for n in counts:
        feeds, next_position = prompt_feeds(bb, args.text_tokens, n, seed=0)
        times = time_interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                                 args.repeats, warmup=1, label=f"prefill N={n}")
        entry = {"visual_tokens": n, **{k: summarize(v) for k, v in times.items()},
                 "speedup": paired_ratio(times["unpruned"], times["halfv"])}
        result["prefill"].append(entry)
        print(f"[bench-graphs] N={n}: unpruned {entry['unpruned']['median_ms']:.0f} ms, HalfV "
              f"{entry['halfv']['median_ms']:.0f} ms, speedup {entry['speedup']:.2f}x", file=sys.stderr, flush=True)
        if first_outputs is None:
            first_outputs = {k: dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
                             for k, s in sessions.items()}
            first_next = next_position
    from transformers import AutoConfig

    from halfv_export.backbones import get_entry

    config_ = (AutoConfig.from_pretrained(args.model_path, local_files_only=True) if args.model_path
               else get_entry(halfv["model"]).make_config())
    text = config_.get_text_config()
    result["flops_model"] = speedup_table(DecoderDims.from_config(text), profile, args.text_tokens, counts,
                                          profile.ivr_keep)
    decode = make_session(halfv.path("decode"), args.threads, quantization=halfv.get("quantization"))
    steps = max(2, args.repeats * DECODE_REPEAT_FACTOR)
    feeds = {k: decode_feeds(bb, first_outputs[k], first_next, 0) for k in sessions}
    times = time_interleaved({k: (lambda f=feeds[k]: decode.run(None, f)) for k in sessions}, steps, warmup=1)
    result["decode"] = {"visual_tokens": counts[0], **{
        k: {**summarize(v), "tokens_per_s": 1.0 / (sum(v) / len(v)),
            "context": int(first_outputs[k][present_name(0, "key")].shape[2])} for k, v in times.items()}}
    print("[bench-graphs] decode: " + ", ".join(f"{k} {result['decode'][k]['tokens_per_s']:.2f} tokens/s"
                                                 for k in sessions), file=sys.stderr)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
