"""`halfv-export build`: calibrate (when no shipped profile fits) -> export -> check -> engine -> bench.

Each step is the same function its own command calls; this module only chains them and summarises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import UserError
from .core.progress import say  # progress lines on the halfv_export logger


@dataclass
class BuildSummary:
    model: str
    profile: dict
    profile_source: str
    graphs_dir: str
    graph_files: dict  # file -> bytes
    parity: dict
    engines: str
    kept: dict = field(default_factory=dict)  # visual tokens per stage at the example N
    speed: dict = field(default_factory=dict)  # FLOPs and measured speedups at the largest N

    def table(self) -> list[str]:
        p = self.profile
        rows = [("model", self.model),
                ("stage layers", f"IVR {p['ivr_layer']}, SSR {p['ssr_layer']} ({p['ssr_mode']}), "
                                 f"{p['num_layers']} layers; profile: {self.profile_source}"),
                ("graphs", self.graphs_dir)]
        rows += [("", f"{name:<14} {size / 2**20:8.2f} MB") for name, size in self.graph_files.items()]
        rows.append(("parity (ORT)", f"{'PASS' if self.parity['passed'] else 'FAIL'}: "
                                     f"{self.parity['passed_count']}/{self.parity['count']} comparisons"
                                     + (f"; first difference: {self.parity['first']}" if self.parity['first'] else "")))
        rows.append(("engines", self.engines))
        if self.kept:
            rows.append(("kept tokens", f"N={self.kept['visual']} -> IVR {self.kept['ivr']} -> SSR {self.kept['ssr']}"))
        if self.speed:
            s = self.speed
            rows.append(("speedup", f"at N={s['visual_tokens']}: FLOPs {s['flops']:.2f}x (paper formula), "
                                    f"measured ORT prefill {s['measured']:.2f}x (HalfV fps vs unpruned, "
                                    f"{s['repeats']} interleaved runs)"))
        width = max(len(k) for k, _ in rows)
        return [f"{k:<{width}}  {v}" for k, v in rows]


def choose_profile(bb, model: str, calibration_out: Path):
    """The shipped profile when it fits the loaded model, else a fresh calibration (synthetic set)."""
    from .backbones.registry import get_entry

    shipped = get_entry(model).shipped_profile()
    try:
        shipped.check_backbone(bb.family, bb.num_layers, model)
        return shipped, f"shipped ({shipped.source})"
    except UserError:
        pass
    from .calibration.data import synthetic_samples
    from .calibration.run import calibrate, write_outputs

    say(f"[build] shipped profile does not fit {model}: calibrating ...")
    profile = calibrate(bb, model, synthetic_samples(16),
                        progress=lambda phase, done, total: say(f"[build] calibrate: {phase} {done}/{total}"))
    write_outputs(profile, calibration_out)
    return profile, f"calibrated ({calibration_out})"


def build(model: str, model_path=None, random_init: bool = False, out_root: str | Path = ".",
          coverage: str = "fps", bench_tokens: tuple = (), bench_repeats: int = 3,
          quantization=None) -> BuildSummary:
    """`quantization` (graphs/quantize.py): weight-only int8/int4 decoder weights; the benchmark keeps
    measuring float graphs of a scaled model (it compares pruning schedules, not weight formats)."""
    from .backbones.registry import load_backbone
    from .engines.builder import build_engines, tensorrt_available
    from .graphs.export import export_graphs
    from .core.plan import PruningPlan
    from .parity import check_graphs

    out_root = Path(out_root)
    bb = load_backbone(model, model_path=model_path, random_init=random_init)
    profile, source = choose_profile(bb, model, out_root / "calibration-out" / f"{model}.json")
    say(f"[build] profile: IVR {profile.ivr_layer}, SSR {profile.ssr_layer} ({profile.ssr_mode}) - {source}")

    graphs_dir = out_root / "graphs" / model
    manifest = export_graphs(bb, model, graphs_dir, PruningPlan.halfv(profile, coverage), profile, progress=say,
                             quantization=quantization)
    files = {name: (graphs_dir / name).stat().st_size for name in manifest.files()}

    say("[build] checking the graphs against the PyTorch reference ...")
    report = check_graphs(graphs_dir, model_path=model_path, random_init=random_init)
    report.save_json(graphs_dir.parent / f"{model}.parity.json")
    first = report.first_failure
    parity = {"passed": report.passed, "count": len(report.comparisons),
              "passed_count": sum(c.passed for c in report.comparisons),
              "first": first.describe() if first else None}

    if quantization is not None and quantization.format == "nbits":
        engines = "skipped: MatMulNBits graphs are for ONNX Runtime (--weights-format qdq for TensorRT)"
        say(f"[build] engines {engines}")
    elif tensorrt_available():
        record = build_engines(graphs_dir, out_root / "engines" / model)
        engines = f"built {', '.join(record['engines'])} in {out_root / 'engines' / model}"
    else:
        engines = "skipped: TensorRT is not importable here (see README: engines are built on the target)"
        say(f"[build] engines {engines}")

    summary = BuildSummary(model, profile.to_dict(), source, str(graphs_dir), files, parity, engines)
    if bench_tokens:
        from .bench import BenchSettings, run_bench

        result = run_bench(BenchSettings(model=model, visual_tokens=tuple(bench_tokens), repeats=bench_repeats),
                           out_root / "bench-out" / model)
        n = max(bench_tokens)
        measured = next(r for r in result["prefill"] if r["visual_tokens"] == n)
        flops = next(r for r in result["flops"]["benchmarked"] if r["visual_tokens"] == n)
        summary.kept = {"visual": n, "ivr": profile.ivr_count(n),
                        "ssr": profile.ssr_count(n) if profile.ssr_mode == "topk" else profile.ivr_count(n)}
        summary.speed = {"visual_tokens": n, "flops": flops["paper"]["speedup"]["halfv"],
                         "measured": measured["variants"]["halfv-fps"]["speedup"], "repeats": bench_repeats}
    return summary
