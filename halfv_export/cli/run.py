"""The commands that run graphs: `run` (halfv_export.runtime, ONNX Runtime only: the base install is enough)
and `bench` (halfv_export.bench: exports scaled models first, so it needs the export extra).
"""

from __future__ import annotations

import click

from .options import CsvList, graphs_option, model_option, needs, ort_threads_option, positive_int


def stats_lines(stats: dict) -> list[str]:
    """runtime.vlm's Answer.stats (a dict): tokens kept per stage, stage times, KV-cache bytes."""
    kept = stats["kept"]
    return [f"visual tokens: {kept['visual']} -> IVR {kept['ivr']} -> SSR {kept['ssr']}",
            f"vision {stats['vision_ms']:.1f} ms, prefill {stats['prefill_ms']:.1f} ms, decode "
            f"{stats['decode_ms']:.1f} ms for {stats['decode_steps']} steps",
            f"KV cache after prefill: {stats['kv_bytes']} bytes ({stats['kv_bytes_unpruned']} unpruned); "
            f"lengths per layer {stats['kv_lengths']}"]


@click.command()
@graphs_option
@click.option("--image", required=True, type=click.Path(), help="image file (PNG, JPEG, ...)")
@click.option("--prompt", required=True, help="question about the image")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, callback=positive_int)
@click.option("--stats", is_flag=True, help="also print tokens kept per stage, prefill/decode time and KV bytes")
@ort_threads_option
def run(graphs_dir, image, prompt, max_new_tokens, stats, threads):
    """Answer a question about an image with the exported graphs (ONNX Runtime, no torch)."""
    from ..core.image import load_image
    from ..runtime.vlm import VlmPipeline

    pipeline = VlmPipeline(graphs_dir, threads=threads, one_shot=True)
    answer = pipeline.answer(load_image(image), prompt, max_new_tokens)
    click.echo(answer.text)
    if stats:
        for line in stats_lines(answer.stats):
            click.echo(line)


@click.command()
@model_option
@click.option("--visual-tokens", type=CsvList(int, low=1), default="576,1024,2048,4096", show_default=True,
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
@ort_threads_option
@click.option("--ort-profile", is_flag=True, help="also profile each variant once at the largest N (time by op type)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="output folder for bench.json and bench.png (default bench-out/<model>)")
@needs("export", "plots")
def bench(model, visual_tokens, layers, width, repeats, text_tokens, fastv_keep, threads, ort_profile, out_dir):
    """FLOPs model and measured ONNX Runtime CPU latency: unpruned, HalfV (fps, oneshot), FastV, oracle."""
    from ..bench import BenchSettings, run_bench, table_lines

    settings = BenchSettings(model=model, visual_tokens=visual_tokens, layers=layers, width=width, repeats=repeats,
                             text_tokens=text_tokens, fastv_keep=fastv_keep, threads=threads, ort_profile=ort_profile)
    result = run_bench(settings, out_dir or f"bench-out/{model}")
    for line in table_lines(result):
        click.echo(line)


COMMANDS = [run, bench]
