"""Export the decoder graphs (embed, prefill with HalfV, decode) to ONNX plus a manifest, atomically.

    skeleton (meta) + plan --wrappers.py--> torch.onnx.export(dynamo=True, string dims, fps translation)
                           --weights.py-->  weights streamed once into decoder.onnx.data, optimiser
                           --naming.py-->   /halfv/ivr/..., /halfv/ssr/... node names
                           --checks-->      TopK K from shapes, no NonZero, onnx.checker full_check
                           --> out_dir/{vision,embed,prefill,decode}.onnx + decoder.onnx.data + manifest.json

Memory: the decoder graphs are traced without weights and each tensor is read from its source (a
checkpoint or an in-memory model), converted and written once (docs/architecture.md).
Precision: fp16 exports the weights in half precision, so the precision lives in the ONNX
(TensorRT 11 builds strongly typed networks only). The softmax and the selection scores stay in fp32
as in the reference. Expected agreement with the fp32 reference is looser: core/tolerances.py.
Quantization (--weights int8|int4): the decoder's linear weights are quantized as they are written
(graphs/quantize.py); the manifest's "quantization" records each one, so `check` can compare against a
reference holding the same dequantized weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir as ir
import torch

from ..backbones.base import Backbone
from ..backbones.checkpoint import ModelWeights, materialize, skeleton_model
from ..core.errors import UserError
from ..core.fileio import atomic_dir
from ..core.limits import check_topk_bound, largest_within_topk
from ..core.manifest import DATA_FILES, DECODER_ROLES, ROLES, SCHEMA_VERSION, Manifest, sha256_file
from ..core.plan import PruningPlan
from ..core.profile import Profile
from ..core.progress import step
from ..core.versions import library_versions
from . import naming
from .fps import translation_table
from .quantize import Quantization
from .vision import export_vision
from .weights import WeightFile, bind, check_quantized, check_weights_external, external_tensors, save_graph
from .wrappers import GraphSpec, decode_spec, embed_spec, prefill_spec

OPSETS = tuple(range(18, 24))  # the dynamo exporter has no implementations below 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
EXPORTABLE_SELECTORS = ("fps", "oneshot", "fastv", "oracle")  # "random" draws with Python ints: not traceable
DECODER_DATA = "decoder.onnx.data"  # the embed, prefill and decode graphs' one copy of the decoder weights
MAX_VISUAL_TOKENS = 16384
LIBRARIES = ("halfv-export", "torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime")


def default_visual_tokens(bb: Backbone, plan: PruningPlan | None) -> tuple[int, int, int]:
    """(min, opt, max) visual tokens the graphs are meant for, when the caller gives none.

    LLaVA-1.5 has a fixed grid. Otherwise max is the largest N whose IVR count stays within
    TensorRT's TopK limit (for Qwen2.5-VL-7B at keep 0.25: 15363), capped at MAX_VISUAL_TOKENS.
    """
    if bb.family == "llava":
        vision = bb.config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        return n, n, n
    high = MAX_VISUAL_TOKENS
    if plan is not None:
        high = largest_within_topk(plan.kept_count, high)
    return 1, min(1024, high), high


def _config(bb: Backbone) -> dict:
    text = bb.text_config
    eos = getattr(text, "eos_token_id", None)
    if eos is None:
        eos = getattr(bb.config, "eos_token_id", None)
    config = {"family": bb.family, "num_layers": bb.num_layers, "hidden_size": bb.hidden_size,
              "num_heads": bb.num_heads, "num_kv_heads": bb.num_kv_heads, "head_dim": bb.head_dim,
              "vocab_size": text.vocab_size, "image_token_id": bb.image_token_id,
              "position_rows": bb.position_rows, "eos_token_id": eos,
              "bos_token_id": getattr(text, "bos_token_id", None)}
    for name in ("vision_start_token_id", "vision_end_token_id"):  # Qwen2.5-VL host-side positions
        if getattr(bb.config, name, None) is not None:
            config[name] = getattr(bb.config, name)
    if bb.position_rows == 3:
        config["spatial_merge_size"] = bb.config.vision_config.spatial_merge_size
    return config


def _io(values) -> list:
    out = []
    for value in values:
        dims = [d if isinstance(d, int) else str(d) for d in value.shape.dims]
        out.append({"name": value.name, "dtype": str(value.dtype.numpy()), "shape": dims})
    return out


EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's own chatter (torch.onnx/torch.export/onnxscript log lines and progress banners, torchvision
    notes, deprecation warnings, stray prints) is not ours to show: their loggers are raised to ERROR, their
    warnings dropped, and what they print kept off stdout, which is a command's answer. With -v (the
    halfv_export logger at DEBUG) all of it is shown, on stderr."""
    import io
    import sys

    from ..core.progress import LOGGER

    if LOGGER.isEnabledFor(logging.DEBUG):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    loggers = [logging.getLogger(n) for n in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _constant_input(graph: ir.Graph, value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or value.name in graph.initializers or (
        producer is not None and producer.op_type == "Constant")


def check_graph(model: ir.Model, role: str) -> None:
    """What must hold for every graph we write (a failure here is a bug in halfv-export, not user input)."""
    for node in model.graph.all_nodes():
        if node.op_type == "NonZero":
            raise RuntimeError(f"{role}: NonZero node {node.name} (TensorRT needs none)")
        if node.op_type == "TopK":
            if _constant_input(model.graph, node.inputs[1]):
                raise RuntimeError(f"{role}: TopK {node.name} has a constant K: a keep count was baked in")
            if node.attributes.get_int("sorted", 1) != 1:
                raise RuntimeError(f"{role}: TopK {node.name} is unsorted (TensorRT needs sorted=1)")
        if node.op_type == "Loop":
            body = node.attributes["body"].value
            if len(body.outputs) != 1 + len(node.inputs) - 2:
                raise RuntimeError(f"{role}: Loop {node.name} has scan outputs (TensorRT forbids dynamic ones)")


def _trace(spec: GraphSpec, opset: int) -> ir.Model:
    """The graph of a meta-device module: weight initializers are placeholders (see weights.bind)."""
    naming.register_anchors()
    module = spec.module.eval()
    args = tuple(a.to("meta") for a in spec.args)
    with _quiet_exporter(), torch.no_grad(), torch.device("meta"):
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=spec.input_names,
            output_names=spec.output_names, dynamic_shapes=spec.dynamic_shapes,
            custom_translation_table=translation_table(), verbose=False, report=False, optimize=False)
    return program.model


def _export_decoder_graph(spec: GraphSpec, opset: int, hf_model, file: WeightFile, path: Path) -> ir.Model:
    """Trace, bind the weights into the shared data file, optimise (as torch.onnx does), check, save."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    model = _trace(spec, opset)
    bind(model, spec.module, hf_model, file)
    file.flush()  # the optimiser may read small weights back while folding
    # A DequantizeLinear of a (small) weight must not be folded back into a float constant.
    onnxscript.optimizer.optimize_ir(model, should_fold=lambda node: False if node.op_type == "DequantizeLinear"
                                     else None)
    onnxscript.rewriter.onnx_fusions.fuse(model)
    naming.name_pruning_nodes(model)
    check_graph(model, spec.role)
    check_quantized(model, spec.role)
    check_weights_external(model, spec.role)
    save_graph(model, path)
    return model


def decoder_keys(model) -> set[str]:
    """State-dict keys of the text decoder and lm_head (everything else belongs to the vision side)."""
    ids = set()
    for module in (model.model.language_model, model.lm_head):
        ids |= {id(t) for t in list(module.parameters()) + list(module.buffers())}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def _copy_tokenizer(bb: Backbone, weights, folder: Path) -> None:
    """The checkpoint's tokenizer.json travels with the graphs (the runtime reads it, torch-free)."""
    checkpoint = getattr(weights, "folder", None) or getattr(bb.model, "name_or_path", "") or ""
    source = Path(checkpoint) / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, folder / "tokenizer.json")


def export_graphs(bb: Backbone, model_name: str, out_dir, plan: PruningPlan | None, profile: Profile | None,
                  opset: int = 20, dtype: str = "fp32", progress: Callable[[str], None] | None = None,
                  visual_tokens: tuple[int, int, int] | None = None, roles: tuple = ROLES,
                  weights=None, quantization: Quantization | None = None) -> Manifest:
    """Export vision.onnx, embed.onnx, prefill.onnx and decode.onnx for `bb` into `out_dir` (replaced as a whole).

    `roles` picks a subset (e.g. only "prefill" to time several plans); the manifest lists what was written.
    `weights` is where the tensors come from (backbones.checkpoint.CheckpointWeights streams them from a
    checkpoint; default: `bb`'s own in-memory model). The graphs are traced on a meta-device copy of the
    model, and each weight is read, converted to `dtype` and written once, so memory stays near one
    tensor for the decoder (the vision tower is materialised whole: it is a small part of the model).
    `quantization` stores the decoder's linear weights int8/int4 (graphs/quantize.py); the vision
    graph and every other weight keep `dtype`.
    """
    if not roles or any(role not in ROLES for role in roles):
        raise UserError(f"roles must be a non-empty subset of {ROLES}, got {roles}")
    if opset not in OPSETS:
        raise UserError(f"opset {opset} is not supported (choose from {OPSETS[0]}..{OPSETS[-1]}; 20 for TensorRT 10)")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if plan is not None and plan.selector not in EXPORTABLE_SELECTORS:
        raise UserError(f"selector {plan.selector!r} cannot be exported "
                        f"(exportable: {', '.join(EXPORTABLE_SELECTORS)})")
    if plan is not None and plan.prune_layer >= bb.num_layers:
        raise UserError(f"prune layer {plan.prune_layer} is past the model's {bb.num_layers} layers")
    if profile is not None:
        profile.check_backbone(bb.family, bb.num_layers, model_name)
    visual_tokens = tuple(visual_tokens) if visual_tokens else default_visual_tokens(bb, plan)
    if not (len(visual_tokens) == 3 and 1 <= visual_tokens[0] <= visual_tokens[1] <= visual_tokens[2]):
        raise UserError(f"visual_tokens must be (min, opt, max) with 1 <= min <= opt <= max, got {visual_tokens}")
    if plan is not None and plan.selector in ("fps", "oneshot"):
        check_topk_bound(profile, visual_tokens[2])  # TensorRT's TopK K limit at the largest N
    say = progress or (lambda line: None)
    torch_dtype = DTYPES[dtype]
    weights = weights if weights is not None else ModelWeights(bb.model)
    traced = type(bb)(skeleton_model(type(bb.model), bb.config, torch_dtype))  # no weight storage
    decoder = decoder_keys(traced.model)
    builders = {"embed": lambda: embed_spec(traced), "prefill": lambda: prefill_spec(traced, plan, torch_dtype),
                "decode": lambda: decode_spec(traced, torch_dtype)}
    graphs, data_files, tensors, quantized = {}, {}, {}, {}
    with atomic_dir(out_dir) as tmp:
        if "vision" in roles:
            start = time.perf_counter()
            vision_keys = [k for k in traced.model.state_dict() if k not in decoder]
            vision = type(bb)(skeleton_model(type(bb.model), bb.config, torch_dtype))
            with step("export: vision weights", total=len(vision_keys), unit="tensors", enabled=progress is not None) \
                    as advance:
                for key in vision_keys:
                    materialize(vision.model, [key], weights, torch_dtype)
                    advance(1)
            say("[export] vision.onnx ...")
            with _quiet_exporter():
                graphs["vision"] = export_vision(vision, tmp / "vision.onnx", opset)
            del vision
            graphs["vision"]["export_seconds"] = round(time.perf_counter() - start, 2)
            say(f"[export] vision.onnx: {graphs['vision']['export_seconds']:.1f} s")
        _copy_tokenizer(bb, weights, tmp)
        decoder_roles = [role for role in DECODER_ROLES if role in roles]
        if decoder_roles:
            total = sum(t.numel() * t.element_size() for k, t in traced.model.state_dict().items() if k in decoder)
            with step("export: decoder weights", total=total, unit="B", enabled=progress is not None) as advance:
                file = WeightFile(tmp, DECODER_DATA, weights, torch_dtype, advance, quantization)
                try:
                    for role in decoder_roles:
                        spec = builders[role]()
                        say(f"[export] {role}.onnx ...")
                        start = time.perf_counter()
                        name = f"{role}.onnx"
                        model = _export_decoder_graph(spec, opset, traced.model, file, tmp / name)
                        file.flush()
                        onnx.checker.check_model(str(tmp / name), full_check=True)
                        stored = external_tensors(model)
                        tensors.update(stored)
                        # Quantized weights are left to ONNX Runtime to map and prepack (runtime/weights.py).
                        shared = sorted(n for n in stored if n not in file.quantized_names)
                        graphs[role] = {"file": name, "data": DECODER_DATA, "sha256": {name: sha256_file(tmp / name)},
                                        "shared_initializers": shared,
                                        "inputs": _io(model.graph.inputs), "outputs": _io(model.graph.outputs),
                                        "nodes": sum(1 for _ in model.graph.all_nodes()),
                                        "export_seconds": round(time.perf_counter() - start, 2)}
                        say(f"[export] {role}.onnx: {graphs[role]['nodes']} nodes, "
                            f"{graphs[role]['export_seconds']:.1f} s")
                finally:
                    file.close()
            data_files[DECODER_DATA] = {"sha256": sha256_file(tmp / DECODER_DATA), "bytes": file.bytes,
                                        "tensors": tensors}
            quantized = file.quantized_weights()
        content = {
            "schema_version": SCHEMA_VERSION, "kind": "graphs", "model": model_name, "backbone": bb.family,
            "profile": profile.to_dict() if profile is not None else None,
            "coverage": plan.selector if plan is not None and plan.selector in ("fps", "oneshot") else None,
            "plan": dataclasses.asdict(plan) if plan is not None else None,
            "opset": opset, "dtype": dtype, "config": _config(bb),
            "quantization": None if quantization is None else {**quantization.to_dict(), "weights": quantized},
            "visual_tokens": dict(zip(("min", "opt", "max"), visual_tokens)),
            "graphs": graphs, DATA_FILES: data_files, "versions": library_versions(LIBRARIES),
        }
        Manifest(content, tmp).save()
    manifest = Manifest(content, out_dir)
    say(f"[export] wrote {out_dir} ({', '.join(g['file'] for g in graphs.values())}, manifest.json)")
    return manifest
