"""The `halfv-export` command: a thin click layer that parses, calls into the package, and prints.

User errors (UserError) print one line and exit 2; anything else is a bug and keeps its traceback.
Options shared by several commands are defined once below and reused.
"""

from __future__ import annotations

import functools
import sys

import click

from .core.errors import UserError
from .graphs.quantize import BITS, BLOCK_SIZES, FORMATS


def user_errors(fn):
    """Turn UserError into `error: <message>` and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return wrapper


# -- shared options ---------------------------------------------------------------------------------
model_option = click.option("--model", "model", required=True, metavar="NAME",
                            help="registry name (see `halfv-export models`)")
model_path_option = click.option("--model-path", type=click.Path(), default=None,
                                 help="local Hugging Face checkpoint directory (safetensors)")
random_init_option = click.option("--random-init", is_flag=True,
                                  help="build the named architecture with random weights (structure/speed work)")
graphs_option = click.option("--graphs", "graphs_dir", required=True, type=click.Path(),
                             help="folder written by `halfv-export export`")


def weights_options(fn):
    """--weights / --block-size / --weights-format, shared by export and build."""
    options = [
        click.option("--weights", "weight_bits", type=click.Choice(["dtype", *BITS]), default="dtype",
                     show_default=True,
                     help="decoder linear weights: as --dtype, or weight-only int8/int4 (RTN, symmetric)"),
        click.option("--block-size", type=click.Choice([str(b) for b in BLOCK_SIZES]), default=str(BLOCK_SIZES[0]),
                     show_default=True,
                     help="input rows per quantization scale (--weights int8/int4)"),
        click.option("--weights-format", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
                     help="nbits: MatMulNBits for ONNX Runtime; qdq: blocked DequantizeLinear for TensorRT "
                          "(its quantized graphs are opset 21)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def quantization_of(weight_bits: str, block_size: str, weights_format: str):
    if weight_bits == "dtype":
        return None
    from .graphs.quantize import Quantization

    return Quantization(BITS[weight_bits], int(block_size), weights_format)


def positive_int(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive integer")
    return value


def kind_weights(ctx, param, value):
    """'shape=4,horizontal=2' -> weights per zoo data.QUESTION_KINDS (kinds not named: 1); 'even' -> None."""
    if value is None or value == "even":
        return value
    from halfv_zoo.data import QUESTION_KINDS

    weights = dict.fromkeys(QUESTION_KINDS, 1.0)
    for item in value.split(","):
        kind, _, number = item.partition("=")
        if kind.strip() not in weights:
            raise click.BadParameter(f"{item!r}: expected KIND=WEIGHT with KIND one of {', '.join(QUESTION_KINDS)}")
        try:
            weights[kind.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{item!r}: the weight is not a number") from None
    if min(weights.values()) < 0 or not sum(weights.values()) > 0:
        raise click.BadParameter("weights must be >= 0, and not all 0")
    return tuple(weights.values())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="halfv-export")
def cli():
    """Compile multimodal LLMs into ONNX/TensorRT graphs with HalfV visual-token pruning inside the decoder."""


@cli.command()
@user_errors
def models():
    """List the known backbones and the profile each uses."""
    from .backbones.registry import models as registered

    rows = [("name", "family", "layers", "hidden", "profile (ivr/ssr/mode)", "weights")]
    for entry in registered().values():
        text = entry.make_config().text_config
        prof = entry.shipped_profile()
        rows.append((entry.name, entry.backbone.family, str(text.num_hidden_layers), str(text.hidden_size),
                     f"{entry.profile} ({prof.ivr_layer}/{prof.ssr_layer}/{prof.ssr_mode}, {prof.source})",
                     "built-in (random, seed 0)" if entry.tiny else entry.hf_repo or "zoo (trained here)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# -- random-checkpoint (halfv_export.backbones.random_checkpoint) -------------------------------------
@cli.command("random-checkpoint")
@model_option
@click.option("--out", "out", required=True, type=click.Path(), help="new folder for the checkpoint (must not "
              "exist or be empty)")
@click.option("--layers", type=int, default=None, help="decoder layers (default: the release's)")
@click.option("--vision-depth", type=int, default=None, help="vision-tower blocks (default: the release's)")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="dtype of the written weights")
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same bytes")
@user_errors
def random_checkpoint(model, out, layers, vision_depth, dtype, seed):
    """Write a Hugging Face checkpoint with the release architecture and random weights (rehearse a deployment)."""
    from .backbones.random_checkpoint import write_random_checkpoint

    written = write_random_checkpoint(model, out, layers=layers, vision_depth=vision_depth, dtype=dtype, seed=seed)
    params = f"{written.parameters / 1e9:.2f} B" if written.parameters >= 1e9 else f"{written.parameters / 1e6:.2f} M"
    size = f"{written.nbytes / 1e9:.2f} GB" if written.nbytes >= 1e9 else f"{written.nbytes / 1e6:.1f} MB"
    click.echo(f"{model}: {params} parameters, {size} of {dtype} weights in {written.shards} safetensors "
               f"file(s), {written.seconds:.1f} s")
    click.echo(f"checkpoint: {written.path}")


# -- calibrate (halfv_export.calibration) -----------------------------------------------------------
@cli.command()
@model_option
@model_path_option
@random_init_option
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
@user_errors
def calibrate(model, model_path, random_init, data_dir, samples, k, kl_threshold, out):
    """Measure TME curves, stage layers and the SSR mode; write a profile JSON and a PNG of the curves."""
    from pathlib import Path

    from .backbones.registry import reference_backbone
    from .calibration.data import DEFAULT_SEED, folder_samples, synthetic_samples
    from .calibration.run import calibrate as run_calibration, mode_reason, write_outputs

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

    def progress(phase, done, total):
        click.echo(f"calibrate: {phase} {done}/{total}", err=True)

    profile = run_calibration(bb, model, chosen, k=k, kl_threshold=kl_threshold, progress=progress, source=source)
    png = write_outputs(profile, out)
    click.echo(f"{model}: {len(chosen)} samples; ivr_layer {profile.ivr_layer}, ssr_layer {profile.ssr_layer}, "
               f"ssr_mode {profile.ssr_mode} ({mode_reason(profile)})")
    click.echo(f"profile: {out}")
    click.echo(f"plot: {png}")


# -- export (halfv_export.graphs) -------------------------------------------------------------------
@cli.command("export")
@model_option
@model_path_option
@random_init_option
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
@click.option("--roles", default="vision,embed,prefill,decode", show_default=True,
              help="graphs to write (e.g. prefill alone, to time it)")
@user_errors
def export_command(model, model_path, random_init, profile_path, out, opset, dtype, weight_bits, block_size,
                   weights_format, coverage, no_prune, roles):
    """Export embed, prefill (HalfV inside) and decode graphs to ONNX, with manifest.json."""
    from pathlib import Path

    import torch

    from .backbones import get_entry
    from .backbones.registry import open_backbone
    from .graphs.export import export_graphs
    from .core.plan import PruningPlan
    from .core.profile import Profile

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
    manifest = export_graphs(bb, model, out, plan, profile, opset=int(opset), dtype=dtype,
                             progress=lambda line: click.echo(line, err=True), weights=weights,
                             quantization=quantization, roles=tuple(r.strip() for r in roles.split(",") if r.strip()))
    what = "unpruned" if plan is None else f"HalfV {coverage}, ssr {profile.ssr_mode}"
    weights_note = "" if quantization is None else f", {weight_bits} {weights_format} block {block_size}"
    click.echo(f"{model}: {', '.join(g['file'] for g in manifest['graphs'].values())} in {out} "
               f"(opset {opset}, {dtype}{weights_note}, {what})")


# -- check (halfv_export.parity) --------------------------------------------------------------------
@cli.command()
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
@click.option("--threads", type=int, default=None, callback=positive_int, help="ONNX Runtime intra-op threads")
@click.option("--max-batch", type=int, default=2, show_default=True, callback=positive_int,
              help="largest batch of the compared shapes (1: half the reference forwards, for full-size models)")
@click.option("--new-tokens", type=int, default=None, callback=positive_int,
              help="greedy tokens compared per request (default: parity.NEW_TOKENS)")
@user_errors
def check(graphs_dir, backend, engines_dir, report_path, junit_path, model_path, random_init, threads, max_batch,
          new_tokens):
    """Compare exported graphs with the PyTorch reference (Polygraphy + greedy tokens). Exit 1 on a mismatch."""
    from polygraphy.logger import G_LOGGER

    from .method.activations import FP16_SAFE_MAX
    from .parity import check_graphs

    G_LOGGER.module_severity = G_LOGGER.ERROR  # our summary below replaces Polygraphy's per-output log
    if backend == "trt":  # engines vs ONNX Runtime first; ONNX Runtime vs the reference follows
        from .engines.builder import default_engines_dir
        from .engines.compare import compare_trt
        from .core.manifest import Manifest

        engines_dir = engines_dir or default_engines_dir(Manifest.load(graphs_dir))
        trt_report = compare_trt(graphs_dir, engines_dir)
        for role, result in trt_report["roles"].items():
            click.echo(f"trt {role:8} {'passed' if result['passed'] else 'FAILED'} ({trt_report['precision']})")
        if not trt_report["passed"]:
            click.echo(f"FAILED: TensorRT engines in {engines_dir} differ from ONNX Runtime", err=True)
            sys.exit(1)
    report = check_graphs(graphs_dir, model_path=model_path, random_init=random_init, threads=threads, progress=True,
                          max_batch=max_batch, **({"new_tokens": new_tokens} if new_tokens else {}))
    if report_path:
        report.save_json(report_path)
    if junit_path:
        report.save_junit(junit_path)
    groups = {}
    for c in report.comparisons:
        groups.setdefault(c.kind, []).append(c)
    for kind, items in groups.items():
        cases = len({c.case for c in items})
        diffs = [c.max_abs_diff for c in items if c.max_abs_diff is not None and c.output == "logits"]
        worst = f", max logits diff {max(diffs):.2g}" if diffs else ""
        click.echo(f"{kind:8} {sum(c.passed for c in items)}/{len(items)} comparisons passed over {cases} shapes"
                   f"{worst}")
    if report.fp16_overflow_layers:
        click.echo(f"warning: activations above {FP16_SAFE_MAX:.0e} in layers {report.fp16_overflow_layers} "
                   f"(largest {max(report.activation_max):.3g}): an fp16 graph of this model would overflow there; "
                   f"keep fp32 graphs for it", err=True)
    first = report.first_failure
    if first is not None:
        click.echo(f"FAILED ({report.model}, {report.dtype}): first difference: {first.describe()}", err=True)
        sys.exit(1)
    click.echo(f"PASSED ({report.model}, {report.dtype}, {report.seconds:.1f} s)")


# -- run / build ------------------------------------------------------------------------------------

@cli.command()
@graphs_option
@click.option("--image", required=True, type=click.Path(), help="image file (PNG, JPEG, ...)")
@click.option("--prompt", required=True, help="question about the image")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, callback=positive_int)
@click.option("--stats", is_flag=True, help="also print tokens kept per stage, prefill/decode time and KV bytes")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
@user_errors
def run(graphs_dir, image, prompt, max_new_tokens, stats, threads):
    """Answer a question about an image with the exported graphs (ONNX Runtime, no torch)."""
    from .runtime.preprocess import load_image
    from .runtime.vlm import VlmPipeline

    pipeline = VlmPipeline(graphs_dir, threads=threads, one_shot=True)
    answer = pipeline.answer(load_image(image), prompt, max_new_tokens)
    click.echo(answer.text)
    if stats:
        s = answer.stats
        kept = s["kept"]
        click.echo(f"visual tokens: {kept['visual']} -> IVR {kept['ivr']} -> SSR {kept['ssr']}")
        click.echo(f"vision {s['vision_ms']:.1f} ms, prefill {s['prefill_ms']:.1f} ms, decode "
                   f"{s['decode_ms']:.1f} ms for {s['decode_steps']} steps")
        click.echo(f"KV cache after prefill: {s['kv_bytes']} bytes ({s['kv_bytes_unpruned']} unpruned); "
                   f"lengths per layer {s['kv_lengths']}")


@cli.command()
@model_option
@model_path_option
@random_init_option
@click.option("--out-root", type=click.Path(file_okay=False), default=".", show_default=True,
              help="where graphs/, engines/, bench-out/ and calibration-out/ go")
@click.option("--coverage", type=click.Choice(["fps", "oneshot"]), default="fps", show_default=True)
@click.option("--bench-tokens", default="64,256", show_default=True,
              help="visual-token counts of the short benchmark (comma-separated; empty to skip)")
@weights_options
@user_errors
def build(model, model_path, random_init, out_root, coverage, bench_tokens, weight_bits, block_size, weights_format):
    """calibrate (if no shipped profile fits) -> export -> check -> engine (if TensorRT) -> bench; one summary."""
    from .build import build as run_build

    tokens = tuple(int(t) for t in bench_tokens.split(",") if t.strip()) if bench_tokens else ()
    if any(t <= 0 for t in tokens):
        raise UserError(f"--bench-tokens must be positive integers, got {bench_tokens!r}")
    summary = run_build(model, model_path, random_init, out_root, coverage, tokens,
                        quantization=quantization_of(weight_bits, block_size, weights_format))
    for line in summary.table():
        click.echo(line)
    if not summary.parity["passed"]:
        sys.exit(1)


# -- bench (halfv_export.bench) ---------------------------------------------------------------------

def int_list(ctx, param, value):
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not values or min(values) <= 0:
        raise click.BadParameter("expected one or more positive integers")
    return values


@cli.command()
@model_option
@click.option("--visual-tokens", default="576,1024,2048,4096", callback=int_list, show_default=True,
              help="visual-token counts N to measure (comma-separated)")
@click.option("--layers", type=int, default=None, callback=positive_int,
              help="decoder depth (default: the backbone's real depth; stage layers move proportionally)")
@click.option("--width", type=int, default=None, callback=positive_int,
              help="hidden size of the scaled model (default 512 for real backbones, tiny ones unchanged)")
@click.option("--repeats", type=int, default=5, show_default=True, callback=positive_int,
              help="timed rounds per N (after one warm-up round); variants interleaved in each round")
@click.option("--text-tokens", type=int, default=60, show_default=True, callback=positive_int,
              help="text tokens around the image")
@click.option("--fastv-keep", type=float, default=None, help="FastV keep share at layer 2 (default: the profile's IVR keep)")
@click.option("--threads", type=int, default=0, show_default=True, help="ONNX Runtime intra-op threads (0: ORT decides)")
@click.option("--ort-profile", is_flag=True, help="also profile each variant once at the largest N (time by op type)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="output folder for bench.json and bench.png (default bench-out/<model>)")
@user_errors
def bench(model, visual_tokens, layers, width, repeats, text_tokens, fastv_keep, threads, ort_profile, out_dir):
    """FLOPs model and measured ONNX Runtime CPU latency: unpruned, HalfV (fps, oneshot), FastV, oracle."""
    from .bench import BenchSettings, run_bench, table_lines

    settings = BenchSettings(model=model, visual_tokens=visual_tokens, layers=layers, width=width, repeats=repeats,
                             text_tokens=text_tokens, fastv_keep=fastv_keep, threads=threads, ort_profile=ort_profile)
    result = run_bench(settings, out_dir or f"bench-out/{model}")
    for line in table_lines(result):
        click.echo(line)


# -- lint / engine / bundle (halfv_export.core.lint, halfv_export.engines, halfv_export.deploy) ----
@cli.command()
@graphs_option
@click.option("--target", type=click.Choice(["trt10", "trt11"]), required=True,
              help="TensorRT version whose ONNX parser the graphs must get through")
@user_errors
def lint(graphs_dir, target):
    """Check every graph against a TensorRT version's ONNX parser rules (runs on the CPU; exit 1 on errors)."""
    from .core.lint import lint_graphs

    report = lint_graphs(graphs_dir, target)
    for finding in report.findings:
        click.echo(finding.line())
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


def engine_shape_options(fn):
    """The sizes the TensorRT profiles cover (shared by `engine` and `bundle`)."""
    options = [
        click.option("--min-pixels", type=int, default=None, callback=positive_int,
                     help="smallest image, in pixels (Qwen2.5-VL: 28x28 pixels per visual token; "
                          "default: the manifest's visual-token range)"),
        click.option("--max-pixels", type=int, default=None, callback=positive_int, help="largest image, in pixels"),
        click.option("--max-text", type=int, default=512, show_default=True, callback=positive_int,
                     help="longest text after the image, in tokens"),
        click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive_int,
                     help="longest generation (sizes the decode graph's past)"),
        click.option("--max-batch", type=int, default=1, show_default=True, callback=positive_int,
                     help="largest batch"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@graphs_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="engines folder (default: engines/<model>/)")
@engine_shape_options
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to reuse and update (faster rebuilds)")
@user_errors
def engine(graphs_dir, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch, timing_cache):
    """Build TensorRT engines (TensorRT 10 or 11 must be importable) with dynamic visual-token profiles."""
    from .engines.builder import build_engines

    record = build_engines(graphs_dir, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch,
                           timing_cache, progress=lambda line: click.echo(line, err=True))
    for role, entry in record["engines"].items():
        click.echo(f"{role}: {entry['file']} ({entry['bytes'] / 2**20:.1f} MiB, {entry['build_seconds']} s)")


@cli.command()
@graphs_option
@click.option("--target", type=click.Choice(["jetson-orin", "jetson-thor"]), required=True,
              help="jetson-orin: JetPack 6 / TensorRT 10; jetson-thor: JetPack 7 / TensorRT 11")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="bundle folder to write")
@engine_shape_options
@user_errors
def bundle(graphs_dir, target, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch):
    """Write a Jetson bundle: the graphs, a trtexec build script with min/opt/max shapes, a run script, a README."""
    from .deploy.jetson import make_bundle

    record = make_bundle(graphs_dir, target, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch)
    click.echo(f"wrote {out_dir} for {record['target']} ({record['jetpack']}, {record['tensorrt']}): "
               f"{', '.join(record['build_commands'])} engines via build_engines.sh "
               f"({' '.join(record['precision_flags'])})")


# -- zoo / eval (halfv_zoo) ------------------------------------------------------------------
ZOO_NAMES = ["shapes-qwen2.5-vl", "shapes-llava"]


@cli.group()
def zoo():
    """Tiny VLMs trained here on procedural shapes VQA (the halfv-zoo package in zoo/; weights in zoo/halfv_zoo/weights)."""


@zoo.command("train")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="weights folder to write (default: the committed zoo/halfv_zoo/weights/NAME)")
@click.option("--examples", type=int, default=None, callback=positive_int,
              help="training examples (train-split indices first..first+N-1)")
@click.option("--epochs", type=int, default=None, callback=positive_int)
@click.option("--batch-size", type=int, default=None, callback=positive_int)
@click.option("--lr", type=float, default=None, help="peak learning rate (AdamW, warmup + cosine)")
@click.option("--seed", type=int, default=None)
@click.option("--time-limit", type=float, default=None, help="stop and save after this many seconds")
@click.option("--first-example", type=int, default=None, help="first train-split index used (default 0)")
@click.option("--describe-share", type=click.FloatRange(0, 1), default=None,
              help="share of examples that describe the whole scene instead of one question (default 0.5)")
@click.option("--turns", type=click.IntRange(min=1), default=None,
              help="questions per image in a question example: the first as at inference, then follow-ups as later "
                   "chat turns (default 5)")
@click.option("--vision-steps", type=click.IntRange(min=0), default=None,
              help="steps of the vision tower alone on the per-token labels, before the question steps "
                   "(default: shapes-llava 10000, shapes-qwen2.5-vl 4000)")
@click.option("--token-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the visual-token probe loss (default 1; 0 turns the probe off)")
@click.option("--place-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the visual-token place loss (default 1; 0 turns it off)")
@click.option("--mention-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the mention place loss: each text word naming a shape learns that shape's image "
                   "quadrant (default 1; 0 turns it off)")
@click.option("--follow-up-weights", default=None, callback=kind_weights,
              help="question kinds of the follow-up turns, e.g. 'shape=4,horizontal=2' (kinds not named: 1), or "
                   "'even' (default: shapes-llava even, shapes-qwen2.5-vl "
                   "colour=0.5,shape=4,count=0.5,horizontal=2,vertical=2)")
@click.option("--threads", type=int, default=None, callback=positive_int,
              help="torch CPU threads (default 2; the same count reproduces the weights bit for bit)")
@click.option("--init", "init", type=click.Path(file_okay=False), default=None,
              help="continue from this weights folder instead of a random init (its train.json is kept)")
@user_errors
def zoo_train(name, out, examples, epochs, batch_size, lr, seed, time_limit, first_example, describe_share,
              turns, vision_steps, token_loss_weight, place_loss_weight, mention_loss_weight, follow_up_weights, threads,
              init):
    """Train NAME from scratch on the shapes train split (CPU, deterministic, progress on stderr)."""
    import dataclasses
    from pathlib import Path

    from halfv_zoo.models import weights_dir
    from halfv_zoo.train import DEFAULTS, save, train

    given = dict(examples=examples, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, time_limit_s=time_limit,
                 first_example=first_example, describe_share=describe_share, turns=turns,
                 vision_steps=vision_steps, token_loss_weight=token_loss_weight,
                 place_loss_weight=place_loss_weight, mention_loss_weight=mention_loss_weight,
                 follow_up_weights=follow_up_weights, threads=threads)
    settings = dataclasses.replace(DEFAULTS[name], **{k: v for k, v in given.items() if v is not None})
    if follow_up_weights == "even":  # overrides a default mix: kinds drawn uniformly
        settings = dataclasses.replace(settings, follow_up_weights=None)
    if settings.batch_size > settings.examples:
        raise UserError(f"--batch-size {settings.batch_size} is larger than --examples {settings.examples}")
    if init is not None and not (Path(init) / "config.json").is_file():
        raise UserError(f"--init {init} is not a weights folder (no config.json)")
    bb, record = train(name, settings, progress=lambda line: click.echo(line, err=True), init=init)
    path = save(bb, name, out or weights_dir(name), record)
    click.echo(f"wrote {path} ({record['steps']} steps, {record['train_seconds']:.0f} s, "
               f"final answer loss {record['loss_curve'][-1]['loss']:.4f})")


@zoo.command("data")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option("--samples", type=int, default=64, show_default=True, callback=positive_int)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@user_errors
def zoo_data(name, split, samples, out):
    """Write shapes questions as a `calibrate --data` folder (images at NAME's input size + prompts.jsonl)."""
    from halfv_zoo.data import write_folder
    from halfv_zoo.models import image_side

    write_folder(split, samples, image_side(name), out)
    click.echo(f"wrote {samples} {split} questions to {out}")


@zoo.command("card")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--samples", type=int, default=300, show_default=True, callback=positive_int,
              help="test questions to measure the unpruned accuracy on")
@user_errors
def zoo_card(name, samples):
    """Measure NAME's test accuracy and write its MODEL_CARD.md (and accuracy.json) into the weights folder."""
    from halfv_zoo.card import write_card

    path, acc = write_card(name, samples)
    click.echo(f"wrote {path} (test accuracy {acc:.3f} on {samples} questions)")


@cli.command("eval")
@model_option
@model_path_option
@click.option("--methods", default="unpruned,halfv,halfv-oneshot,fastv,random", show_default=True,
              help="comma-separated: unpruned, halfv, halfv-oneshot, fastv, random")
@click.option("--keep", "keeps", default="0.5,0.25,0.125", show_default=True,
              help="comma-separated visual keep budgets (HalfV ivr_keep, FastV/random keep)")
@click.option("--samples", type=int, default=200, show_default=True, callback=positive_int,
              help="test questions (the first N of the test split)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder for eval.json and eval.png (default: eval-out/<model>/)")
@click.option("--graphs", "graphs_dir", type=click.Path(), default=None,
              help="evaluate this exported graphs folder through ONNX Runtime instead of the PyTorch methods")
@click.option("--sweep-layers", is_flag=True,
              help="instead: HalfV accuracy for every IVR/SSR layer pair at the profile's budgets (sweep.json/png)")
@user_errors
def eval_command(model, model_path, methods, keeps, samples, out_dir, graphs_dir, sweep_layers):
    """Shapes VQA test accuracy per pruning method and budget, relative to unpruned, vs FLOPs speedup."""
    from pathlib import Path

    from .backbones.registry import get_entry, load_backbone
    from .core.fileio import atomic_path, write_json
    from halfv_zoo.eval import METHODS, evaluate, evaluate_graphs, plot, plot_sweep, sweep_layers as sweep

    if model not in ZOO_NAMES:
        raise UserError(f"eval needs a zoo model ({', '.join(ZOO_NAMES)}): its questions have known answers")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    try:
        budgets = [float(k) for k in keeps.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--keep must be comma-separated numbers, got {keeps!r}") from None
    if not budgets or any(not 0 < k <= 1 for k in budgets):
        raise UserError(f"--keep values must be in (0, 1], got {keeps!r}")
    bb = load_backbone(model, model_path)
    progress = lambda line: click.echo(line, err=True)  # noqa: E731
    out = Path(out_dir or Path("eval-out") / model)
    if sweep_layers:
        stem, draw = "sweep", plot_sweep
        report = sweep(bb, model, get_entry(model).shipped_profile(), samples, progress)
    elif graphs_dir is not None:
        stem, draw = "eval", plot
        report = evaluate_graphs(bb, model, graphs_dir, samples, progress)
    else:
        stem, draw = "eval", plot
        report = evaluate(bb, model, get_entry(model).shipped_profile(), names, budgets, samples, progress)
    write_json(out / f"{stem}.json", report)
    with atomic_path(out / f"{stem}.png") as tmp:
        draw(report, tmp)
    click.echo(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")


# -- triton / serve (halfv_export.deploy.triton, halfv_export.deploy.serve) ------------------------------
def port_option(name, what, default):
    return click.option(name, type=int, default=default, show_default=True, help=f"{what} port (127.0.0.1 only)")


@cli.command()
@graphs_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="model repository to write")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime",
              show_default=True, help="how the vision/embed/prefill/decode models run (halfv_vlm is always Python)")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False), default=None,
              help="folder from `halfv-export engine` whose plans are copied in (--backend tensorrt)")
@click.option("--vlm-mode", type=click.Choice(["local", "bls"]), default=None,
              help="halfv_vlm runs the graphs in-process (local, python backend only) or calls the graph models "
                   "(bls); default: local for python, bls otherwise")
@click.option("--max-image-pixels", type=int, default=4096 * 4096, show_default=True, callback=positive_int,
              help="larger IMAGE inputs are refused with an error response")
@click.option("--instances", type=int, default=1, show_default=True, callback=positive_int,
              help="halfv_vlm instances (each one serves one request at a time)")
@click.option("--threads", type=int, default=0, show_default=True,
              help="ONNX Runtime intra-op threads in the Python models (0: ORT decides)")
@user_errors
def triton(graphs_dir, out_dir, backend, engines_dir, vlm_mode, max_image_pixels, instances, threads):
    """Write a Triton model repository: vision/embed/prefill/decode models and the halfv_vlm Python model."""
    from .deploy.triton import make_repository

    record = make_repository(graphs_dir, out_dir, backend, engines_dir=engines_dir, vlm_mode=vlm_mode,
                             max_image_pixels=max_image_pixels, instances=instances, threads=threads)
    models = ", ".join(f"{name} ({kind})" for name, kind in record["models"].items())
    click.echo(f"wrote {out_dir}: {models}")
    if "tensorrt" in record["models"].values() and not record["plans_copied"]:
        click.echo(f"TensorRT plans still to copy in: see {out_dir}/README.md")


@cli.command()
@graphs_option
@port_option("--http-port", "HTTP", 8000)
@port_option("--grpc-port", "gRPC", 8001)
@port_option("--metrics-port", "metrics", 8002)
@click.option("--instances", type=int, default=1, show_default=True, callback=positive_int,
              help="halfv_vlm instances (each one serves one request at a time)")
@click.option("--threads", type=int, default=0, show_default=True,
              help="ONNX Runtime intra-op threads (0: ORT decides)")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait for readiness")
@user_errors
def serve(graphs_dir, http_port, grpc_port, metrics_port, instances, threads, timeout):
    """Serve the graphs with the Triton server bundled in nvidia-pytriton (python backend) until Ctrl-C."""
    import signal
    import time

    from .deploy.serve import serve_graphs

    def terminate(signum, frame):  # SIGTERM takes the same way out as Ctrl-C: the server group is stopped
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with serve_graphs(graphs_dir, http_port, grpc_port, metrics_port, instances=instances, threads=threads,
                          timeout=timeout) as server:
            click.echo(f"serving halfv_vlm at http://{server.url} (gRPC 127.0.0.1:{server.grpc_port}, "
                       f"metrics 127.0.0.1:{server.metrics_port}); Ctrl-C stops", err=False)
            sys.stdout.flush()
            while server.process.poll() is None:
                time.sleep(0.5)
            raise UserError(f"tritonserver exited with code {server.process.returncode}; last lines of its log:\n"
                            f"{server.log_tail()}")
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main():
    cli(prog_name="halfv-export")


if __name__ == "__main__":
    main()
