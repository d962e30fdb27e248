"""The commands that make and verify graphs: `export` (halfv_export.graphs), `check` (halfv_export.parity),
`calibrate` (halfv_export.calibration) and `build` (halfv_export.build chains them all).

All need the export extra (torch, transformers, onnx, ...), imported inside each command.
"""

from __future__ import annotations

import sys

import click

from ..core.errors import UserError
from ..core.progress import LOGGER, say
from .options import (CsvList, graphs_option, model_options, model_path_option, needs, ort_threads_option,
                      positive_int, quantization_of, random_init_option, weights_options)


# -- calibrate (halfv_export.calibration) -----------------------------------------------------------
@click.command()
@model_options
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="folder with images and prompts.jsonl ({\"image\": ..., \"prompt\": ...} per line); "
                   "default: the built-in synthetic set")
@click.option("--samples", type=int, default=None, callback=positive_int,
              help="number of samples (default: 16 synthetic, or every line of --data)")
@click.option("--k", "k", type=int, default=32, show_default=True, callback=positive_int,
              help="eigenvalues kept by the truncated matrix entropy")
@click.option("--kl-threshold", type=float, default=1e-3, show_default=True,
              help="median layer-skip KL below this means SSR mode 'freeze', else 'topk'")
@click.option("--out", "out", type=click.Path(), default=None,
              help="profile JSON (default: calibration-out/<model>.json); the PNG goes next to it")
@needs("export", "plots")
def calibrate(model, model_path, random_init, data_dir, samples, k, kl_threshold, out):
    """Measure TME curves, stage layers and the SSR mode; write a profile JSON and a PNG of the curves."""
    from pathlib import Path

    from ..backbones.registry import reference_backbone
    from ..calibration.data import DEFAULT_SEED, folder_samples, synthetic_samples
    from ..calibration.run import calibrate as run_calibration, mode_reason, write_outputs

    if kl_threshold <= 0:
        raise click.BadParameter("must be > 0", param_hint="--kl-threshold")
    out = Path(out) if out is not None else Path("calibration-out") / f"{model}.json"
    if out.suffix.lower() == ".png":
        raise UserError(f"--out {out} must name the profile JSON; the PNG goes next to it")
    if data_dir is not None:
        chosen, source = folder_samples(data_dir, samples), f"folder {data_dir}"
    else:
        chosen, source = synthetic_samples(samples or 16), f"synthetic (seed {DEFAULT_SEED})"
    bb = reference_backbone(model, model_path, random_init)  # decoder layers streamed from a checkpoint
    profile = run_calibration(bb, model, chosen, k=k, kl_threshold=kl_threshold, source=source,
                              progress=lambda phase, done, total: say(f"calibrate: {phase} {done}/{total}"))
    png = write_outputs(profile, out)
    click.echo(f"{model}: {len(chosen)} samples; ivr_layer {profile.ivr_layer}, ssr_layer {profile.ssr_layer}, "
               f"ssr_mode {profile.ssr_mode} ({mode_reason(profile)})")
    click.echo(f"profile: {out}")
    click.echo(f"plot: {png}")


# -- export (halfv_export.graphs) -------------------------------------------------------------------
@click.command("export")
@model_options
@click.option("--profile", "profile_path", type=click.Path(), default=None,
              help="profile JSON (default: the model's shipped profile)")
@click.option("--out", type=click.Path(), default=None, help="graphs folder (default: graphs/<model>/)")
@click.option("--opset", type=click.Choice(["20", "23"]), default="20", show_default=True,
              help="20: TensorRT 10 ceiling; 23 adds Attention/RMSNormalization")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="precision stored in the ONNX (fp16 for strongly typed TensorRT 11)")
@weights_options
@click.option("--coverage", type=click.Choice(["fps", "oneshot"]), default="fps", show_default=True,
              help="fps: exact HalfV (ONNX Loop); oneshot: one TopK, an approximation")
@click.option("--no-prune", is_flag=True, help="export the unpruned decoder (the baseline)")
@click.option("--roles", type=CsvList(str), default="vision,embed,prefill,decode", show_default=True,
              help="graphs to write (e.g. prefill alone, to time it)")
@needs("export")
def export_command(model, model_path, random_init, profile_path, out, opset, dtype, weight_bits, block_size,
                   weights_format, coverage, no_prune, roles):
    """Export embed, prefill (HalfV inside) and decode graphs to ONNX, with manifest.json."""
    from pathlib import Path

    import torch

    from ..backbones import get_entry
    from ..backbones.registry import open_backbone
    from ..core.plan import PruningPlan
    from ..core.profile import Profile
    from ..graphs.export import export_graphs

    entry = get_entry(model)
    quantization = quantization_of(weight_bits, block_size, weights_format)
    profile = plan = None
    if no_prune and profile_path is not None:
        raise UserError("--profile and --no-prune exclude each other")
    if not no_prune:
        profile = Profile.load(profile_path) if profile_path is not None else entry.shipped_profile()
        if model_path is None:  # refuse a wrong profile before loading weights
            profile.check_backbone(entry.backbone.family, entry.make_config().text_config.num_hidden_layers, model)
        plan = PruningPlan.halfv(profile, coverage)
    # checkpoints are streamed tensor by tensor (a 7B model never sits in memory); random models are built
    bb, weights = open_backbone(model, model_path, random_init, dtype=torch.float16 if dtype == "fp16" else torch.float32)
    out = Path(out) if out is not None else Path("graphs") / model
    manifest = export_graphs(bb, model, out, plan, profile, opset=int(opset), dtype=dtype, progress=say,
                             weights=weights, quantization=quantization, roles=roles)
    what = "unpruned" if plan is None else f"HalfV {coverage}, ssr {profile.ssr_mode}"
    weights_note = "" if quantization is None else f", {weight_bits} {weights_format} block {block_size}"
    click.echo(f"{model}: {', '.join(g['file'] for g in manifest['graphs'].values())} in {out} "
               f"(opset {opset}, {dtype}{weights_note}, {what})")


# -- check (halfv_export.parity) --------------------------------------------------------------------
def trt_lines(report: dict) -> list[str]:
    """engines.compare.compare_trt's report (a dict): one verdict line per role."""
    return [f"trt {role:8} {'passed' if result['passed'] else 'FAILED'} ({report['precision']})"
            for role, result in report["roles"].items()]


@click.command()
@graphs_option
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ort: ONNX Runtime vs the PyTorch reference; trt: also the TensorRT engines vs ONNX Runtime")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), default=None,
              help="with --backend trt: folder written by `halfv-export engine` (default engines/<model>/)")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="write every comparison (shape, max abs diff, verdict) as JSON")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None,
              help="write JUnit XML, one testcase per comparison")
@model_path_option
@random_init_option
@ort_threads_option
@click.option("--max-batch", type=int, default=2, show_default=True, callback=positive_int,
              help="largest batch of the compared shapes (1: half the reference forwards, for full-size models)")
@click.option("--new-tokens", type=int, default=None, callback=positive_int,
              help="greedy tokens compared per request (default: parity.NEW_TOKENS)")
@needs("export")
def check(graphs_dir, backend, engines_dir, report_path, junit_path, model_path, random_init, threads, max_batch,
          new_tokens):
    """Compare exported graphs with the PyTorch reference (Polygraphy + greedy tokens). Exit 1 on a mismatch."""
    from polygraphy.logger import G_LOGGER

    from ..parity import check_graphs

    G_LOGGER.module_severity = G_LOGGER.ERROR  # our summary below replaces Polygraphy's per-output log
    if backend == "trt":  # engines vs ONNX Runtime first; ONNX Runtime vs the reference follows
        from ..core.manifest import Manifest
        from ..engines.builder import default_engines_dir
        from ..engines.compare import compare_trt

        engines_dir = engines_dir or default_engines_dir(Manifest.load(graphs_dir))
        trt_report = compare_trt(graphs_dir, engines_dir)
        for line in trt_lines(trt_report):
            click.echo(line)
        if not trt_report["passed"]:
            click.echo(f"FAILED: TensorRT engines in {engines_dir} differ from ONNX Runtime", err=True)
            sys.exit(1)
    report = check_graphs(graphs_dir, model_path=model_path, random_init=random_init, threads=threads, progress=True,
                          max_batch=max_batch, **({"new_tokens": new_tokens} if new_tokens else {}))
    if report_path:
        report.save_json(report_path)
    if junit_path:
        report.save_junit(junit_path)
    summary = report.render()
    if summary:
        click.echo(summary)
    for warning in report.warnings():
        LOGGER.warning(warning)
    if not report.passed:
        click.echo(report.verdict(), err=True)
        sys.exit(1)
    click.echo(report.verdict())


# -- build (halfv_export.build) ---------------------------------------------------------------------
@click.command()
@model_options
@click.option("--out-root", type=click.Path(file_okay=False), default=".", show_default=True,
              help="where graphs/, engines/, bench-out/ and calibration-out/ go")
@click.option("--coverage", type=click.Choice(["fps", "oneshot"]), default="fps", show_default=True)
@click.option("--bench-tokens", type=CsvList(int, low=1, empty_ok=True), default="64,256", show_default=True,
              help="visual-token counts of the short benchmark (comma-separated; empty to skip)")
@weights_options
@needs("export", "plots")
def build(model, model_path, random_init, out_root, coverage, bench_tokens, weight_bits, block_size, weights_format):
    """calibrate (if no shipped profile fits) -> export -> check -> engine (if TensorRT) -> bench; one summary."""
    from ..build import build as run_build

    summary = run_build(model, model_path, random_init, out_root, coverage, bench_tokens,
                        quantization=quantization_of(weight_bits, block_size, weights_format))
    for line in summary.table():
        click.echo(line)
    if not summary.parity["passed"]:
        sys.exit(1)


COMMANDS = [export_command, check, calibrate, build]
