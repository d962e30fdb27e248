"""The commands that take graphs to a target: `lint` (core.lint, the TensorRT parser rules), `engine`
(engines.builder, TensorRT on this machine), `bundle` (deploy.jetson), `triton` (deploy.triton, a model
repository) and `serve` (deploy.serve, the Triton server of nvidia-pytriton).

lint, engine and bundle read the graphs with onnx (the lint extra); triton and serve need the triton extra.
TensorRT is no extra (it comes with a JetPack or a TensorRT install): engines.builder says when it is missing.
"""

from __future__ import annotations

import sys

import click

from ..core.errors import UserError
from ..core.progress import say
from .options import engine_shape_options, graphs_option, needs, ort_threads_option, positive_int

instances_option = click.option("--instances", type=int, default=1, show_default=True, callback=positive_int,
                                help="halfv_vlm instances (each one serves one request at a time)")


def port_option(name: str, what: str, default: int):
    return click.option(name, type=int, default=default, show_default=True, help=f"{what} port (127.0.0.1 only)")


@click.command()
@graphs_option
@click.option("--target", type=click.Choice(["trt10", "trt11"]), required=True,
              help="TensorRT version whose ONNX parser the graphs must get through")
@needs("lint")
def lint(graphs_dir, target):
    """Check every graph against a TensorRT version's ONNX parser rules (runs on the CPU; exit 1 on errors)."""
    from ..core.lint import lint_graphs

    report = lint_graphs(graphs_dir, target)
    for finding in report.findings:
        click.echo(finding.line())
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


def engine_lines(record: dict) -> list[str]:
    """engines.builder's record (a dict): one line per engine, its file, size and build time."""
    return [f"{role}: {entry['file']} ({entry['bytes'] / 2**20:.1f} MiB, {entry['build_seconds']} s)"
            for role, entry in record["engines"].items()]


@click.command()
@graphs_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="engines folder (default: engines/<model>/)")
@engine_shape_options
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to reuse and update (faster rebuilds)")
@needs("lint")
def engine(graphs_dir, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch, timing_cache):
    """Build TensorRT engines (TensorRT 10 or 11 must be importable) with dynamic visual-token profiles."""
    from ..engines.builder import build_engines

    record = build_engines(graphs_dir, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch,
                           timing_cache, progress=say)
    for line in engine_lines(record):
        click.echo(line)


@click.command()
@graphs_option
@click.option("--target", type=click.Choice(["jetson-orin", "jetson-thor"]), required=True,
              help="jetson-orin: JetPack 6 / TensorRT 10; jetson-thor: JetPack 7 / TensorRT 11")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="bundle folder to write")
@engine_shape_options
@needs("lint")
def bundle(graphs_dir, target, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch):
    """Write a Jetson bundle: the graphs, a trtexec build script with min/opt/max shapes, a run script, a README."""
    from ..deploy.jetson import make_bundle

    record = make_bundle(graphs_dir, target, out_dir, min_pixels, max_pixels, max_text, max_new_tokens, max_batch)
    click.echo(f"wrote {out_dir} for {record['target']} ({record['jetpack']}, {record['tensorrt']}): "
               f"{', '.join(record['build_commands'])} engines via build_engines.sh "
               f"({' '.join(record['precision_flags'])})")


@click.command()
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
@instances_option
@ort_threads_option
@needs("triton")
def triton(graphs_dir, out_dir, backend, engines_dir, vlm_mode, max_image_pixels, instances, threads):
    """Write a Triton model repository: vision/embed/prefill/decode models and the halfv_vlm Python model."""
    from ..deploy.triton import make_repository

    record = make_repository(graphs_dir, out_dir, backend, engines_dir=engines_dir, vlm_mode=vlm_mode,
                             max_image_pixels=max_image_pixels, instances=instances, threads=threads)
    models = ", ".join(f"{name} ({kind})" for name, kind in record["models"].items())
    click.echo(f"wrote {out_dir}: {models}")
    if "tensorrt" in record["models"].values() and not record["plans_copied"]:
        click.echo(f"TensorRT plans still to copy in: see {out_dir}/README.md")


@click.command()
@graphs_option
@port_option("--http-port", "HTTP", 8000)
@port_option("--grpc-port", "gRPC", 8001)
@port_option("--metrics-port", "metrics", 8002)
@instances_option
@ort_threads_option
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait for readiness")
@needs("triton")
def serve(graphs_dir, http_port, grpc_port, metrics_port, instances, threads, timeout):
    """Serve the graphs with the Triton server bundled in nvidia-pytriton (python backend) until Ctrl-C."""
    import signal
    import time

    from ..deploy.serve import serve_graphs

    def terminate(signum, frame):  # SIGTERM takes the same way out as Ctrl-C: the server group is stopped
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with serve_graphs(graphs_dir, http_port, grpc_port, metrics_port, instances=instances, threads=threads,
                          timeout=timeout) as server:
            click.echo(f"serving halfv_vlm at http://{server.url} (gRPC 127.0.0.1:{server.grpc_port}, "
                       f"metrics 127.0.0.1:{server.metrics_port}); Ctrl-C stops")
            sys.stdout.flush()
            while server.process.poll() is None:
                time.sleep(0.5)
            raise UserError(f"tritonserver exited with code {server.process.returncode}; last lines of its log:\n"
                            f"{server.log_tail()}")
    except KeyboardInterrupt:
        say("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


COMMANDS = [lint, engine, bundle, triton, serve]
