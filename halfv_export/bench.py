"""`halfv-export bench`: the FLOPs model next to measured ONNX Runtime CPU latency of the exported graphs.

What is measured, on an "architecture-faithful scaled" model: the named backbone's real layer count
and shipped profile, with the width reduced (heads scaled to keep head_dim 64 or 128, the GQA ratio
kept as closely as the head count allows, MLP and vocabulary scaled with the width) and random
weights. Pruning decisions do not depend on the weights' quality, and cost does not either.

    build scaled model -> export 5 prefill graphs (+ 1 decode graph) with the project's exporter
      -> per visual-token count N: warm-up, then R rounds; each round runs every variant once,
         in an order rotated per round, so machine drift hits all variants alike
      -> decode step over the pruned and unpruned caches of that prompt, interleaved the same way
      -> bench.json (every figure, machine, versions) + bench.png (speedup vs N)

Variants: unpruned, HalfV with fps coverage (exact), HalfV with oneshot coverage, FastV (layer 2),
and the oracle (HalfV's schedule with a plain slice instead of selection: the speed floor).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .core.errors import UserError
from .core.fileio import atomic_path, write_json
from .core.flops import FORMULAS, FREEZE_NOTE, DecoderDims, speedup_table
from .core.manifest import CACHE_PARTS, INDEX_OUTPUTS, past_name, present_name
from .core.profile import Profile
from .core.progress import say
from .runtime.pipeline import make_session

SCHEMA = "halfv-bench/1"
VARIANTS = ("unpruned", "halfv-fps", "halfv-oneshot", "fastv", "oracle")
DECODE_CACHES = ("unpruned", "halfv-fps", "fastv")  # oneshot and oracle caches have halfv-fps's lengths
FASTV_LAYER = 2
DECODE_REPEAT_FACTOR = 4  # a decode step is short: more rounds for the same noise


def log(message: str) -> None:
    """A progress line on the halfv_export logger (core/progress.py)."""
    say(f"[bench] {message}")


@dataclass(frozen=True)
class BenchSettings:
    model: str
    visual_tokens: tuple = (576, 1024, 2048, 4096)
    layers: int | None = None  # None: the backbone's real depth
    width: int | None = None  # None: 512 for real backbones, the model's own width for tiny ones
    repeats: int = 5
    text_tokens: int = 60
    fastv_keep: float | None = None  # None: the profile's IVR keep share
    threads: int = 0  # ORT intra-op threads; 0 lets ORT decide
    opset: int = 20
    seed: int = 0
    ort_profile: bool = False  # per-op-type time of each variant at the largest N (ORT profiling)

    def validate(self) -> None:
        if not self.visual_tokens or any(n < 1 for n in self.visual_tokens):
            raise UserError("--visual-tokens must be a comma-separated list of positive integers")
        if self.repeats < 1:
            raise UserError("--repeats must be >= 1")
        if self.text_tokens < 2:
            raise UserError("--text-tokens must be >= 2 (text before and after the image)")
        if self.layers is not None and self.layers < 3:
            raise UserError("--layers must be >= 3 (early stage, IVR stage, SSR stage)")
        if self.fastv_keep is not None and not 0 < self.fastv_keep <= 1:
            raise UserError("--fastv-keep must be in (0, 1]")
        if self.threads < 0:
            raise UserError("--threads must be >= 0")


# -- the scaled model ---------------------------------------------------------------------------------

def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def scaled_text_dims(text, width: int) -> dict:
    """Text-config fields for `width`: head_dim 128 kept at >= 8 heads, else 64; GQA ratio kept."""
    hidden, heads, kv = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    old_head_dim = getattr(text, "head_dim", None) or hidden // heads
    if width == hidden:
        return {}
    head_dim = old_head_dim if width // old_head_dim >= 8 else min(old_head_dim, 64)
    if width % head_dim:
        raise UserError(f"--width {width} must be a multiple of the head size {head_dim}")
    new_heads = width // head_dim
    groups = heads // kv
    new_kv = max(1, round(new_heads / groups))
    while new_heads % new_kv:  # nearest smaller divisor keeps the grouping valid
        new_kv -= 1
    scale = width / hidden
    fields = dict(hidden_size=width, num_attention_heads=new_heads, num_key_value_heads=new_kv,
                  intermediate_size=_round_to(text.intermediate_size * scale, 32),
                  # the LM head keeps its share of the per-token cost (it matters for decode)
                  vocab_size=_round_to(text.vocab_size * scale, 64))
    if getattr(text, "head_dim", None) is not None:
        fields["head_dim"] = head_dim
    rope = dict(getattr(text, "rope_parameters", None) or {})
    if "mrope_section" in rope:  # M-RoPE sections must sum to head_dim / 2
        sections = [s * head_dim // old_head_dim for s in rope["mrope_section"]]
        sections[-1] += head_dim // 2 - sum(sections)
        fields["rope_parameters"] = {**rope, "mrope_section": sections}
    return fields


def _shrink_vision(config, width: int) -> None:
    """The vision tower is not benchmarked (the graphs take embeddings): make it tiny, keep it valid."""
    vision = config.vision_config
    if hasattr(vision, "out_hidden_size"):  # Qwen2.5-VL
        for key, value in dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=width,
                               fullatt_block_indexes=[0]).items():
            setattr(vision, key, value)
    else:  # CLIP (LLaVA family); the projector maps it to the text width
        for key, value in dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               projection_dim=64).items():
            setattr(vision, key, value)


def scaled_profile(profile: Profile, layers: int) -> Profile:
    """The profile's stage layers moved proportionally to a different depth."""
    if layers == profile.num_layers:
        return profile
    ivr = min(max(1, round(profile.ivr_layer * layers / profile.num_layers)), layers - 2)
    ssr = min(max(ivr + 1, round(profile.ssr_layer * layers / profile.num_layers)), layers - 1)
    return replace(profile, num_layers=layers, ivr_layer=ivr, ssr_layer=ssr, source="scaled-from-paper",
                   model=f"{profile.model} ({layers} layers)")


def build_scaled(name: str, width: int | None, layers: int | None, seed: int = 0):
    """(backbone with random weights, its profile, the real model's profile, description)."""
    from .backbones.registry import build_random, get_entry

    entry = get_entry(name)
    config = entry.make_config()
    text = config.text_config
    real = DecoderDims.from_config(text)
    width = width if width is not None else (text.hidden_size if entry.tiny else 512)
    if width < 64 and width != text.hidden_size:
        raise UserError(f"--width {width} is too small (>= 64)")
    for key, value in scaled_text_dims(text, width).items():
        setattr(text, key, value)
    if layers is not None:
        text.num_hidden_layers = layers
    if width != real.hidden or not entry.tiny:
        _shrink_vision(config, width)
    real_profile = entry.shipped_profile()
    profile = scaled_profile(real_profile, text.num_hidden_layers)
    bb = build_random(entry, config=config, seed=seed)
    dims = DecoderDims.from_config(bb.text_config)
    params = sum(p.numel() for p in bb.text_model.layers.parameters())
    info = {"real": asdict(real), "benchmarked": asdict(dims), "vocab_size": bb.text_config.vocab_size,
            "decoder_layer_params": params, "weights": f"random (seed {seed})",
            "scaling": "real layer count and profile, reduced width; heads keep head_dim, GQA ratio kept where "
                       "the head count allows; MLP and vocabulary scaled with the width; vision tower shrunk "
                       "(not benchmarked: the graphs take embeddings)"}
    return bb, profile, real_profile, info


# -- inputs -------------------------------------------------------------------------------------------

def _grid(n: int) -> list:
    """A Qwen2.5-VL image grid (t, h, w in patches) with n merged tokens, as square as n allows."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return [1, 2 * a, 2 * (n // a)]


def prompt_feeds(bb, n_text: int, n_visual: int, seed: int) -> tuple[dict, np.ndarray]:
    """Prefill feeds (random embeddings, the family's real positions) and next_position."""
    from .runtime.positions import prompt_positions

    prefix = max(1, n_text // 4)  # system/user header before the image, question after it
    suffix = n_text - prefix
    ids = np.array([[10] * prefix + [bb.image_token_id] * n_visual + [10] * suffix], dtype=np.int64)
    grid = [_grid(n_visual)] if bb.position_rows == 3 else None
    positions, next_position = prompt_positions(ids, bb.position_rows, bb.image_token_id, grid)
    rng = np.random.default_rng(seed)
    d = bb.hidden_size

    def embeds(n):
        return (rng.standard_normal((1, n, d)) * 0.02).astype(np.float32)  # the scale of embedding tables

    feeds = {"prefix_embeds": embeds(prefix), "visual_embeds": embeds(n_visual), "suffix_embeds": embeds(suffix),
             "position_ids": positions}
    return feeds, next_position


def decode_feeds(bb, prefill_outputs: dict, next_position: np.ndarray, seed: int) -> dict:
    from .runtime.positions import decode_positions

    rng = np.random.default_rng(seed + 1)
    feeds = {"token_embeds": (rng.standard_normal((1, 1, bb.hidden_size)) * 0.02).astype(np.float32),
             "position_ids": decode_positions(next_position, 0, bb.position_rows)}
    for i in range(bb.num_layers):
        for part in CACHE_PARTS:
            feeds[past_name(i, part)] = prefill_outputs[present_name(i, part)]
    return feeds


# -- timing -------------------------------------------------------------------------------------------

def time_interleaved(runs: dict, repeats: int, warmup: int = 1, label: str = "") -> dict:
    """Seconds per call for each named callable: warm-up excluded, rounds rotate the variant order."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
        if label:
            log(f"{label}: round {r + 1}/{repeats}")
    return times


def paired_ratio(numerator: list, denominator: list) -> float:
    """Median over rounds of the per-round ratio: variants of one round ran back to back, so load that
    comes and goes between rounds (other processes) cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def summarize(seconds: list) -> dict:
    ms = [s * 1e3 for s in seconds]
    q1, q3 = np.percentile(ms, [25, 75])
    return {"median_ms": statistics.median(ms), "iqr_ms": float(q3 - q1), "runs_ms": ms}


def op_profile(path: Path, feeds: dict, threads: int, prefix: Path) -> dict:
    """Where one prefill run spends its time: ORT's profiler, kernel time by op type and in /halfv/ nodes.

    Two runs in a profiling session; only the events inside the second run's window are counted. A Loop's
    time includes its body's nodes, which ORT also lists one by one: kernel_ms can exceed run_ms.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-1]
    window = (last["ts"], last["ts"] + last["dur"])
    by_op, halfv, halfv_scopes = {}, 0.0, {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or not window[0] <= e["ts"] <= window[1]:
            continue
        ms = e["dur"] / 1e3
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + ms
        if e["name"].startswith("/halfv/"):
            halfv += ms
            scope = "/".join(e["name"].split("/")[:4])
            halfv_scopes[scope] = halfv_scopes.get(scope, 0.0) + ms
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:10])
    return {"run_ms": last["dur"] / 1e3, "kernel_ms": sum(by_op.values()), "by_op_ms": top,
            "halfv_nodes_ms": halfv, "halfv_scopes_ms": dict(sorted(halfv_scopes.items(), key=lambda kv: -kv[1]))}


def _plans(profile: Profile, fastv_keep: float) -> dict:
    from .core.plan import PruningPlan

    return {"unpruned": None, "halfv-fps": PruningPlan.halfv(profile, "fps"),
            "halfv-oneshot": PruningPlan.halfv(profile, "oneshot"),
            "fastv": PruningPlan.fastv(fastv_keep, layer=FASTV_LAYER), "oracle": PruningPlan.oracle(profile)}


def _export_all(bb, name: str, profile: Profile, fastv_keep: float, workdir: Path, opset: int) -> tuple[dict, dict]:
    from .graphs.export import export_graphs

    folders, seconds = {}, {}
    for variant, plan in _plans(profile, fastv_keep).items():
        log(f"exporting {variant} ...")
        start = time.perf_counter()
        folders[variant] = workdir / variant
        # the decode graph does not depend on the plan: export it once
        roles = ("prefill", "decode") if variant == "unpruned" else ("prefill",)
        export_graphs(bb, name, folders[variant], plan, profile, opset=opset, dtype="fp32", roles=roles)
        seconds[variant] = time.perf_counter() - start
    return folders, seconds


def _kept_counts(outputs: dict) -> dict:
    return {key: int(outputs[key].shape[1]) for key in INDEX_OUTPUTS if key in outputs}


def _expected_counts(variant: str, profile: Profile, fastv_keep: float, n: int) -> dict:
    from .core.profile import keep_count

    if variant == "unpruned":
        return {}
    if variant == "fastv":
        return {"kept_ivr": keep_count(n, fastv_keep)}
    out = {"kept_ivr": profile.ivr_count(n)}
    if profile.ssr_mode == "topk":
        out["kept_ssr"] = profile.ssr_count(n)
    return out


def _machine() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}}


def measure_prefill(sessions: dict, feeds: dict, repeats: int, profile: Profile, fastv_keep: float,
                    n: int) -> tuple[dict, dict]:
    """Median/IQR prefill latency per variant at one N, and each variant's outputs (for the decode step)."""
    outputs = {}
    for v, session in sessions.items():  # this run is also the warm-up of the timed rounds
        names = [o.name for o in session.get_outputs()]
        outputs[v] = dict(zip(names, session.run(None, feeds)))
        kept, expected = _kept_counts(outputs[v]), _expected_counts(v, profile, fastv_keep, n)
        if kept != expected:  # a constant K baked into a graph would show up here
            raise RuntimeError(f"{v} at N={n} kept {kept}, the profile says {expected}")
    times = time_interleaved({v: (lambda s=s: s.run(None, feeds)) for v, s in sessions.items()}, repeats,
                             warmup=0, label=f"prefill N={n}")
    stats = {v: {**summarize(times[v]), **_kept_counts(outputs[v])} for v in sessions}
    for v in sessions:
        stats[v]["speedup"] = paired_ratio(times["unpruned"], times[v])
        stats[v]["speedup_of_medians"] = stats["unpruned"]["median_ms"] / stats[v]["median_ms"]
    stats["halfv-fps"]["over_oracle"] = paired_ratio(times["halfv-fps"], times["oracle"])
    stats["halfv-oneshot"]["over_oracle"] = paired_ratio(times["halfv-oneshot"], times["oracle"])
    stats["halfv-fps"]["over_oneshot"] = paired_ratio(times["halfv-fps"], times["halfv-oneshot"])
    log("prefill N=%d: %s" % (n, ", ".join(f"{v} {stats[v]['median_ms']:.1f} ms" for v in sessions)))
    return {"visual_tokens": n, "sequence": int(feeds["position_ids"].shape[-1]), "variants": stats}, outputs


def measure_decode(decode, bb, outputs: dict, next_position, settings: BenchSettings, n: int) -> dict:
    """One decode step over the unpruned, HalfV and FastV caches of the same prompt, interleaved."""
    feeds = {c: decode_feeds(bb, outputs[c], next_position, settings.seed) for c in DECODE_CACHES}
    context = int(outputs["unpruned"][present_name(0, "key")].shape[2])
    times = time_interleaved({c: (lambda f=feeds[c]: decode.run(None, f)) for c in DECODE_CACHES},
                             settings.repeats * DECODE_REPEAT_FACTOR)
    stats = {}
    for c in DECODE_CACHES:
        present = [outputs[c][present_name(i, part)] for i in range(bb.num_layers) for part in CACHE_PARTS]
        stats[c] = {**summarize(times[c]), "kv_cache_bytes": int(sum(p.nbytes for p in present)),
                    "kv_lengths": [int(p.shape[2]) for p in present[::2]]}
    for c in DECODE_CACHES:
        stats[c]["speedup"] = paired_ratio(times["unpruned"], times[c])
        stats[c]["kv_ratio"] = stats[c]["kv_cache_bytes"] / stats["unpruned"]["kv_cache_bytes"]
    log("decode N=%d: %s" % (n, ", ".join(f"{c} {stats[c]['median_ms']:.2f} ms" for c in DECODE_CACHES)))
    return {"visual_tokens": n, "context": context, "caches": stats}


def run_bench(settings: BenchSettings, out_dir: str | os.PathLike) -> dict:
    """Everything `halfv-export bench` does; writes bench.json and bench.png into out_dir."""
    settings.validate()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    log(f"building {settings.model} (scaled, random weights) ...")
    bb, profile, real_profile, model_info = build_scaled(settings.model, settings.width, settings.layers,
                                                         settings.seed)
    fastv_keep = settings.fastv_keep if settings.fastv_keep is not None else profile.ivr_keep
    counts = sorted(set(settings.visual_tokens))
    dims = DecoderDims.from_config(bb.text_config)
    real_dims = DecoderDims(**model_info["real"])
    result = {
        "schema": SCHEMA, "model": settings.model, "settings": {**asdict(settings), "visual_tokens": counts,
                                                                "fastv_keep": fastv_keep, "fastv_layer": FASTV_LAYER},
        "model_info": model_info, "profile": profile.to_dict(),
        "formula": {"headline": FORMULAS["paper"], "refined": FORMULAS["gqa"], "freeze": FREEZE_NOTE},
        "machine": _machine(),
        "flops": {"real": speedup_table(real_dims, real_profile, settings.text_tokens, counts, fastv_keep,
                                        FASTV_LAYER),
                  "benchmarked": speedup_table(dims, profile, settings.text_tokens, counts, fastv_keep, FASTV_LAYER)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".bench-graphs-", dir=out_dir))
    try:
        folders, export_seconds = _export_all(bb, settings.model, profile, fastv_keep, workdir, settings.opset)
        result["export_seconds"] = export_seconds
        log("loading ONNX Runtime sessions ...")
        sessions = {v: make_session(folders[v] / "prefill.onnx", settings.threads) for v in VARIANTS}
        decode = make_session(folders["unpruned"] / "decode.onnx", settings.threads)
        result["prefill"], result["decode"] = [], []
        for n in counts:
            feeds, next_position = prompt_feeds(bb, settings.text_tokens, n, settings.seed)
            row, outputs = measure_prefill(sessions, feeds, settings.repeats, profile, fastv_keep, n)
            result["prefill"].append(row)
            result["decode"].append(measure_decode(decode, bb, outputs, next_position, settings, n))
        if settings.ort_profile:
            n = counts[-1]
            feeds, _ = prompt_feeds(bb, settings.text_tokens, n, settings.seed)
            result["ort_profile"] = {"visual_tokens": n, "variants": {}}
            for v in VARIANTS:
                log(f"ORT profiling {v} at N={n} ...")
                result["ort_profile"]["variants"][v] = op_profile(folders[v] / "prefill.onnx", feeds, settings.threads,
                                                                  workdir / f"profile-{v}")
        del sessions, decode
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["targets"] = targets(result)
    result["wall_seconds"] = time.perf_counter() - started
    plot(result, out_dir / "bench.png")  # the JSON last: its presence means the run completed
    write_json(out_dir / "bench.json", result)
    log(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'} in {result['wall_seconds']:.0f} s")
    return result


def targets(result: dict) -> list:
    """The design's goals, reported per N (not asserted): measured vs FLOPs speedup, HalfV vs oracle."""
    rows = []
    for measured, flops in zip(result["prefill"], result["flops"]["benchmarked"]):
        v = measured["variants"]
        rows.append({
            "visual_tokens": measured["visual_tokens"],
            "halfv_fps_measured_over_flops_paper": v["halfv-fps"]["speedup"] / flops["paper"]["speedup"]["halfv"],
            "halfv_fps_measured_over_flops_gqa": v["halfv-fps"]["speedup"] / flops["gqa"]["speedup"]["halfv"],
            "halfv_fps_over_oracle_latency": v["halfv-fps"]["over_oracle"],
            "halfv_oneshot_over_oracle_latency": v["halfv-oneshot"]["over_oracle"],
            "fps_over_oneshot_latency": v["halfv-fps"]["over_oneshot"],
        })
    return rows


# -- report -------------------------------------------------------------------------------------------

def table_lines(result: dict) -> list:
    """The figures of one run as text rows (the CLI prints them; the README quotes them)."""
    lines = [f"formula: {result['formula']['headline']}",
             f"refined: {result['formula']['refined']}",
             f"freeze:  {result['formula']['freeze']}"]
    info = result["model_info"]["benchmarked"]
    lines.append(f"model: {result['model']} scaled to d={info['hidden']} m={info['intermediate']} "
                 f"L={info['num_layers']} heads={info['num_heads']}/{info['num_kv_heads']} (random weights); "
                 f"text tokens {result['settings']['text_tokens']}, FastV keep {result['settings']['fastv_keep']} "
                 f"at layer {FASTV_LAYER}")
    lines.append("FLOPs speedup (paper formula | GQA-aware), real model and benchmarked model:")
    lines.append(f"{'N':>6} {'real HalfV':>14} {'real FastV':>14} {'bench HalfV':>14} {'bench FastV':>14}")
    for real, bench in zip(result["flops"]["real"], result["flops"]["benchmarked"]):
        cells = [f"{r[f]['speedup'][k]:.2f}" for r in (real, bench) for k in ("halfv", "fastv")
                 for f in ("paper", "gqa")]
        lines.append(f"{real['visual_tokens']:>6} " + " ".join(f"{a + ' | ' + b:>14}"
                                                               for a, b in zip(cells[::2], cells[1::2])))
    if "prefill" in result:
        lines.append("measured ORT CPU prefill, median ms (IQR) and speedup over unpruned "
                     "(median of per-round ratios):")
        lines.append(f"{'N':>6} " + " ".join(f"{v:>22}" for v in VARIANTS))
        for row in result["prefill"]:
            cells = [f"{s['median_ms']:.1f} ({s['iqr_ms']:.1f}) {s['speedup']:.2f}x"
                     for s in (row["variants"][v] for v in VARIANTS)]
            lines.append(f"{row['visual_tokens']:>6} " + " ".join(f"{c:>22}" for c in cells))
        lines.append("decode step with each cache, median ms (IQR), speedup, KV-cache MB (ratio to unpruned):")
        lines.append(f"{'N':>6} " + " ".join(f"{c:>34}" for c in DECODE_CACHES))
        for row in result["decode"]:
            cells = [f"{s['median_ms']:.2f} ({s['iqr_ms']:.2f}) {s['speedup']:.2f}x {s['kv_cache_bytes'] / 2**20:.1f} MB "
                     f"({s['kv_ratio']:.2f})" for s in (row["caches"][c] for c in DECODE_CACHES)]
            lines.append(f"{row['visual_tokens']:>6} " + " ".join(f"{c:>34}" for c in cells))
        lines.append("targets: measured/FLOPs (paper | gqa) >= 0.85 at N >= 1024; HalfV/oracle <= 1.10:")
        for t in result["targets"]:
            lines.append(f"{t['visual_tokens']:>6} measured/FLOPs {t['halfv_fps_measured_over_flops_paper']:.2f} | "
                         f"{t['halfv_fps_measured_over_flops_gqa']:.2f}; fps/oracle "
                         f"{t['halfv_fps_over_oracle_latency']:.2f}, oneshot/oracle "
                         f"{t['halfv_oneshot_over_oracle_latency']:.2f}, fps/oneshot {t['fps_over_oneshot_latency']:.2f}")
    if "ort_profile" in result:
        lines.append(f"ORT profile at N={result['ort_profile']['visual_tokens']} (one run; kernel ms by op type):")
        for v, p in result["ort_profile"]["variants"].items():
            ops = ", ".join(f"{op} {ms:.1f}" for op, ms in list(p["by_op_ms"].items())[:5])
            lines.append(f"  {v:>14}: run {p['run_ms']:.1f} ms, /halfv/ nodes {p['halfv_nodes_ms']:.1f} ms; {ops}")
    return lines


def plot(result: dict, path: str | os.PathLike) -> None:
    """Speedup vs visual tokens: FLOPs ratios (lines) and measured ratios (markers) per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["visual_tokens"] for r in result["flops"]["benchmarked"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"halfv": "tab:blue", "fastv": "tab:orange"}
    for key, label in (("halfv", "HalfV"), ("fastv", "FastV")):
        for formula, style in (("paper", "-"), ("gqa", ":")):
            ax.plot(counts, [r[formula]["speedup"][key] for r in result["flops"]["benchmarked"]], style,
                    color=colors[key], label=f"{label} FLOPs ({formula})")
        ax.plot(counts, [r["paper"]["speedup"][key] for r in result["flops"]["real"]], "--", color=colors[key],
                alpha=0.5, label=f"{label} FLOPs, real {result['model']}")
    markers = {"halfv-fps": ("o", "tab:blue"), "halfv-oneshot": ("s", "tab:cyan"), "fastv": ("^", "tab:orange"),
               "oracle": ("x", "black")}
    for variant, (marker, color) in markers.items():
        if result.get("prefill"):
            ax.plot([r["visual_tokens"] for r in result["prefill"]],
                    [r["variants"][variant]["speedup"] for r in result["prefill"]], marker, color=color,
                    linestyle="none", markersize=7, label=f"{variant} measured (ORT CPU)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("visual tokens N")
    ax.set_ylabel("prefill speedup over unpruned")
    info = result["model_info"]["benchmarked"]
    ax.set_title(f"{result['model']} scaled (d={info['hidden']}, L={info['num_layers']})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def load_result(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
