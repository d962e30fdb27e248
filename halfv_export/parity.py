"""`halfv-export check`: exported graphs against the PyTorch reference they were exported from.

Two kinds of comparison, all recorded in one report:

  prefill   Polygraphy's Comparator runs prefill.onnx in ONNX Runtime (OnnxrtRunner) and our CPU torch
            runner (method.decoder.prefill_tensors; Polygraphy's PytRunner calls .cuda()) over several
            shapes (two visual-token counts, batch 1 and 2). Logits and present KVs are compared with
            the dtype's tolerances (SimpleCompareFunc); kept_ivr / kept_ssr exactly (IndicesCompareFunc).
  generate  The torch-free OrtPipeline (embed + prefill + decode over the ragged cache, host positions)
            against method.decoder.generate: the greedy tokens must be identical, as must the kept
            indices; one text-only request exercises the decode-graph-only prompt path.

Inputs are synthetic and seeded: random text ids, and visual embeddings drawn at the scale of the
token embedding table (the vision graphs are a later issue; any [B, N, D] exercises the pruning).
"""

from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .core.errors import UserError
from .core.fileio import atomic_path, write_json
from .core.manifest import INDEX_OUTPUTS, PRESENT_PREFIX, Manifest, present_name
from .core.profile import Profile
from .core.progress import step
from .core.tolerances import PARITY

NEW_TOKENS = 16
ONNX_RUNNER, TORCH_RUNNER = "onnxrt", "torch-reference"


@dataclass(frozen=True)
class Case:
    """One synthetic request shape: batch, text before the image, visual tokens, text after."""

    batch: int
    prefix: int
    visual: int
    suffix: int
    seed: int

    @property
    def label(self) -> str:
        if self.visual == 0:
            return f"B={self.batch} S={self.prefix + self.suffix} text only"
        return f"B={self.batch} P={self.prefix} N={self.visual} T={self.suffix}"


@dataclass
class Comparison:
    kind: str  # "prefill" | "generate"
    case: str
    output: str
    shape: list | None  # ONNX Runtime side
    reference_shape: list | None
    max_abs_diff: float | None  # None where shapes differ or for token sequences
    atol: float | None
    rtol: float | None
    passed: bool
    detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind} [{self.case}] {self.output}"

    def describe(self) -> str:
        if self.shape != self.reference_shape:
            return f"{self.name}: shape {self.shape} vs reference {self.reference_shape}"
        text = f"{self.name}: max abs diff {self.max_abs_diff:.3g}" if self.max_abs_diff is not None else self.name
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class ParityReport:
    graphs: str
    model: str
    dtype: str
    plan: dict | None
    comparisons: list = field(default_factory=list)
    seconds: float = 0.0
    activation_max: list = field(default_factory=list)  # largest |activation| per decoder layer (reference)
    fp16_overflow_layers: list = field(default_factory=list)  # layers past method.activations.FP16_SAFE_MAX

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def first_failure(self) -> Comparison | None:
        return next((c for c in self.comparisons if not c.passed), None)

    def to_dict(self) -> dict:
        first = self.first_failure
        return {"graphs": self.graphs, "model": self.model, "dtype": self.dtype, "plan": self.plan,
                "tolerances": dict(zip(("atol", "rtol"), PARITY[self.dtype])),
                "passed": self.passed, "first_difference": first.describe() if first else None,
                "seconds": round(self.seconds, 3), "activation_max": self.activation_max,
                "fp16_overflow_layers": self.fp16_overflow_layers,
                "comparisons": [dict(asdict(c), name=c.name, verdict="pass" if c.passed else "fail")
                                for c in self.comparisons]}

    def save_json(self, path) -> None:
        write_json(path, self.to_dict())

    def render(self) -> str:
        """The summary `check` prints: per comparison kind, how many passed, over how many shapes, the worst
        logits difference."""
        groups = {}
        for c in self.comparisons:
            groups.setdefault(c.kind, []).append(c)
        lines = []
        for kind, items in groups.items():
            cases = len({c.case for c in items})
            diffs = [c.max_abs_diff for c in items if c.max_abs_diff is not None and c.output == "logits"]
            worst = f", max logits diff {max(diffs):.2g}" if diffs else ""
            lines.append(f"{kind:8} {sum(c.passed for c in items)}/{len(items)} comparisons passed over {cases} "
                         f"shapes{worst}")
        return "\n".join(lines)

    __str__ = render

    def verdict(self) -> str:
        """The last line: PASSED with the time taken, or FAILED with the first difference."""
        first = self.first_failure
        if first is not None:
            return f"FAILED ({self.model}, {self.dtype}): first difference: {first.describe()}"
        return f"PASSED ({self.model}, {self.dtype}, {self.seconds:.1f} s)"

    def warnings(self) -> list[str]:
        """What the reference saw that the graphs' user should know (fp16 overflow of an fp32 model)."""
        from .method.activations import FP16_SAFE_MAX

        if not self.fp16_overflow_layers:
            return []
        return [f"activations above {FP16_SAFE_MAX:.0e} in layers {self.fp16_overflow_layers} (largest "
                f"{max(self.activation_max):.3g}): an fp16 graph of this model would overflow there; keep fp32 "
                f"graphs for it"]

    def save_junit(self, path) -> None:
        """JUnit XML: one testcase per comparison, a <failure> naming the difference where it failed."""
        failures = sum(not c.passed for c in self.comparisons)
        suites = ET.Element("testsuites", tests=str(len(self.comparisons)), failures=str(failures))
        suite = ET.SubElement(suites, "testsuite", name=f"halfv-export check {self.model}",
                              tests=str(len(self.comparisons)), failures=str(failures), errors="0",
                              time=f"{self.seconds:.3f}")
        for c in self.comparisons:
            case = ET.SubElement(suite, "testcase", classname=f"parity.{c.kind}.{c.case}", name=c.output)
            if not c.passed:
                ET.SubElement(case, "failure", message=c.describe())
        with atomic_path(path) as tmp:
            ET.ElementTree(suites).write(tmp, encoding="utf-8", xml_declaration=True)


# -- inputs --------------------------------------------------------------------------------------------
def default_cases(manifest: Manifest) -> list[Case]:
    """Four prefill shapes over two visual-token counts inside the manifest's range, batch 1 and 2."""
    lo, hi = visual_counts(manifest)
    return [Case(1, 5, lo, 7, 0), Case(2, 3, hi, 9, 1), Case(2, 4, lo, 6, 2), Case(1, 6, hi, 5, 3)]


def visual_counts(manifest: Manifest) -> tuple[int, int]:
    """Two distinct counts, small enough for a CPU check: 16 and 24 clamped into the manifest's range.

    A fixed-grid model (LLaVA-1.5: min == max) still gets a second, smaller count: its visual axis is
    dynamic in the graph all the same, and two counts are what catches a keep count baked in as a constant.
    """
    rng = manifest.get("visual_tokens") or {}
    vmin, vmax = int(rng.get("min", 1)), int(rng.get("max", 1 << 30))
    lo, hi = min(max(16, vmin), vmax), min(max(24, vmin), vmax)
    if lo == hi:
        lo, hi = (max(1, hi // 2), hi) if hi > 1 else (1, 2)
    return lo, hi


def merged_grid(n: int) -> tuple[int, int]:
    """A merged (rows, cols) grid with rows * cols = n, as square as n allows."""
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return rows, n // rows


class RequestMaker:
    """Synthetic requests for a backbone: prompt ids with the image span, visual embeddings, grids."""

    # Text ids are drawn below this as well: real vocabularies keep their added special tokens at the top
    # (Qwen2.5-VL from 151643), and random text should not hit one the config does not name.
    TEXT_ID_CAP = 32000

    def __init__(self, bb, dtype: str):
        from .runtime.text import BYTE_OFFSET, special_token_ids

        self.bb = bb
        self.np_dtype = np.float16 if dtype == "fp16" else np.float32
        cfg = bb.config
        vocab = bb.text_config.vocab_size
        special = special_token_ids(cfg) | {bb.image_token_id}
        # Random text ids: any id the embedding table holds except the image, video, vision start/end, bos, eos
        # and pad ids, from BYTE_OFFSET up where there are any (transformers' test configurations have 99 ids
        # and image token 0 or 4).
        top = min(vocab, self.TEXT_ID_CAP)
        pool = [i for i in range(BYTE_OFFSET, top) if i not in special] or [i for i in range(top) if i not in special]
        if not pool:
            raise UserError(f"{bb.family} config: its {vocab} token ids are all special ({sorted(special)}), "
                            "so no text can go around the image")
        self.text_ids = np.array(pool, dtype=np.int64)
        # The vision start/end markers go around the image only where the embedding table has them.
        self.start_id, self.end_id = (i if i is not None and 0 <= i < vocab else None
                                      for i in (getattr(cfg, "vision_start_token_id", None),
                                                getattr(cfg, "vision_end_token_id", None)))
        self.scale = float(bb.embed_tokens.weight.detach().float().std())

    def make(self, case: Case):
        """(input_ids [B, S] int64, visual_embeds [B, N, D] or None, image_grid_thw [B, 3] or None)."""
        gen = np.random.default_rng(case.seed)
        before = self.text_ids[gen.integers(0, len(self.text_ids), (case.batch, case.prefix))]
        after = self.text_ids[gen.integers(0, len(self.text_ids), (case.batch, case.suffix))]
        if case.visual == 0:
            return np.concatenate([before, after], axis=1).astype(np.int64), None, None
        if self.start_id is not None and case.prefix:
            before[:, -1] = self.start_id
        if self.end_id is not None and case.suffix:
            after[:, 0] = self.end_id
        span = np.full((case.batch, case.visual), self.bb.image_token_id)
        ids = np.concatenate([before, span, after], axis=1).astype(np.int64)
        visual = (gen.standard_normal((case.batch, case.visual, self.bb.hidden_size)) * self.scale)
        grid = None
        if self.bb.position_rows == 3:
            merge = self.bb.config.vision_config.spatial_merge_size
            rows, cols = merged_grid(case.visual)
            # alternate orientation per row: batched rows may have different grids of the same size
            grid = np.array([[1, rows * merge, cols * merge] if r % 2 == 0 else [1, cols * merge, rows * merge]
                             for r in range(case.batch)], dtype=np.int64)
        return ids, visual.astype(self.np_dtype), grid

    def reference_inputs(self, ids, visual, grid):
        """DecoderInputs for method.decoder from the backbone itself (transformers positions)."""
        from .backbones.base import DecoderInputs, MultimodalBatch

        ids_t = torch.from_numpy(ids)
        with torch.no_grad():
            embeds = self.bb.embed_tokens(ids_t)
        start, count = self.bb.visual_span(ids_t)
        if count:
            embeds = embeds.clone()
            embeds[:, start:start + count] = torch.from_numpy(visual.astype(np.float32))
        batch = MultimodalBatch(ids_t, image_grid_thw=None if grid is None else torch.from_numpy(grid))
        position_ids, next_position = self.bb.position_ids(batch)
        return DecoderInputs(embeds, position_ids, start, count, next_position)

    def prefill_feed(self, case: Case) -> OrderedDict:
        ids, visual, grid = self.make(case)
        ref = self.reference_inputs(ids, visual, grid)
        embeds = ref.embeds.numpy().astype(self.np_dtype)
        end = case.prefix + case.visual
        return OrderedDict(prefix_embeds=embeds[:, :case.prefix], visual_embeds=visual,
                           suffix_embeds=embeds[:, end:], position_ids=ref.position_ids.numpy().astype(np.int64))


# -- the torch runner ------------------------------------------------------------------------------------
def torch_prefill_runner(bb, plan, output_names, input_metadata, name=TORCH_RUNNER):
    """A Polygraphy runner over method.decoder.prefill_tensors on the CPU, in fp32."""
    from polygraphy.backend.base import BaseRunner

    class TorchPrefillRunner(BaseRunner):
        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return input_metadata

        def infer_impl(self, feed_dict):
            began = time.perf_counter()
            prefix, visual, suffix = (torch.from_numpy(np.asarray(feed_dict[k], dtype=np.float32))
                                      for k in ("prefix_embeds", "visual_embeds", "suffix_embeds"))
            position_ids = torch.from_numpy(np.asarray(feed_dict["position_ids"]))
            from .method.decoder import prefill_tensors

            with torch.no_grad():
                result = prefill_tensors(bb, torch.cat([prefix, visual, suffix], dim=1), position_ids,
                                         prefix.shape[1], visual.shape[1], plan)
            values = {"logits": result.logits, "kept_ivr": result.kept_ivr, "kept_ssr": result.kept_ssr}
            for i, (k, v) in enumerate(result.cache):
                values[present_name(i, "key")], values[present_name(i, "value")] = k, v
            out = OrderedDict((n, values[n].numpy()) for n in output_names if values.get(n) is not None)
            self.inference_time = time.perf_counter() - began
            return out

    return TorchPrefillRunner(name=name)


# -- checks ----------------------------------------------------------------------------------------------
def reference_plan(manifest: Manifest, family: str, num_layers: int):
    """The PruningPlan the graphs were exported with (None for --no-prune graphs)."""
    from .core.plan import PruningPlan

    if manifest.get("profile"):
        Profile.from_dict(manifest["profile"]).check_backbone(family, num_layers, manifest.get("model", ""))
    try:
        if manifest.get("plan"):
            return PruningPlan(**manifest["plan"])
        if manifest.get("profile"):
            return PruningPlan.halfv(Profile.from_dict(manifest["profile"]), manifest.get("coverage") or "fps")
    except (TypeError, ValueError) as exc:
        raise UserError(f"{manifest.folder}: manifest plan is not usable: {exc}") from None
    return None


def check_same_model(manifest: Manifest, bb, sessions) -> None:
    """Refuse a folder whose manifest or graphs do not belong to the model the manifest names."""
    cfg = manifest.get("config", {})
    name = manifest.get("model")
    if manifest.get("backbone") != bb.family:
        raise UserError(f"{manifest.folder}: manifest backbone {manifest.get('backbone')!r} is not {name}'s "
                        f"({bb.family}): folder from another model")
    ours = {"num_layers": bb.num_layers, "hidden_size": bb.hidden_size, "num_kv_heads": bb.num_kv_heads,
            "head_dim": bb.head_dim, "vocab_size": bb.text_config.vocab_size, "image_token_id": bb.image_token_id,
            "position_rows": bb.position_rows}
    for key, value in ours.items():
        if key in cfg and int(cfg[key]) != int(value):
            raise UserError(f"{manifest.folder}: manifest {key} {cfg[key]} differs from {name}'s {value}: "
                            f"folder from another model")
    # the graphs themselves: static hidden and vocab dims, one present pair per layer
    prefill = sessions["prefill"]
    inputs = {i.name: i.shape for i in prefill.get_inputs()}
    vocab = {o.name: o.shape for o in prefill.get_outputs()}["logits"][-1]
    presents = sum(o.name.startswith(PRESENT_PREFIX) for o in prefill.get_outputs())
    for what, got, want in (("hidden size", inputs["visual_embeds"][-1], bb.hidden_size),
                            ("position_ids rank", len(inputs["position_ids"]), 3 if bb.position_rows == 3 else 2),
                            ("vocab", vocab, bb.text_config.vocab_size),
                            ("present outputs", presents, 2 * bb.num_layers)):
        if isinstance(got, int) and got != want:
            raise UserError(f"{manifest.path('prefill')}: {what} {got} differs from {name}'s {want}: "
                            f"graph from another model")


def _arrays_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def compare_prefill(manifest: Manifest, bb, plan, maker: RequestMaker, cases, dtype: str,
                    session=None) -> list[Comparison]:
    """`session`: the prefill session to compare (the pipeline's, so its weights are not loaded twice)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.common import TensorMetadata
    from polygraphy.logger import G_LOGGER
    from polygraphy.comparator import (Comparator, IndicesCompareFunc, IterationResult, RunResults,
                                       SimpleCompareFunc)

    atol, rtol = PARITY[dtype]
    onnx_runner = OnnxrtRunner(session if session is not None else
                               SessionFromOnnx(str(manifest.path("prefill")), providers=["cpu"]), name=ONNX_RUNNER)
    feeds = [maker.prefill_feed(case) for case in cases]
    with G_LOGGER.verbosity(G_LOGGER.WARNING), onnx_runner:
        output_names = [o.name for o in onnx_runner.sess.get_outputs()]
        metadata = TensorMetadata()
        for name, array in feeds[0].items():
            metadata.add(name, array.dtype, [None] * array.ndim)
    torch_runner = torch_prefill_runner(bb, plan, output_names, metadata)
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # Polygraphy's per-tensor INFO lines drown the report
        results = Comparator.run([onnx_runner, torch_runner], data_loader=feeds)

    def floats(name, index, iter_result):
        return None if name in INDEX_OUTPUTS else [name]

    # IndicesCompareFunc has no output filter: give it the kept-index outputs only
    index_results = RunResults()
    for runner, iterations in results:
        index_results.append((runner, [
            IterationResult(OrderedDict((k, v) for k, v in it.items() if k in INDEX_OUTPUTS), runtime=it.runtime,
                            runner_name=runner) for it in iterations]))
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        accuracy = list(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
            atol=atol, rtol=rtol, check_error_stat="elemwise", find_output_func=floats)))
        if any(name in INDEX_OUTPUTS for name in output_names):
            accuracy += list(Comparator.compare_accuracy(index_results,
                                                         compare_func=IndicesCompareFunc(index_tolerance=0)))
    pair = (ONNX_RUNNER, TORCH_RUNNER)
    verdicts = [{} for _ in cases]
    for acc in accuracy:
        for i, outs in enumerate(acc[pair]):
            verdicts[i].update({name: bool(v) for name, v in outs.items()})

    out = []
    for i, case in enumerate(cases):
        ours, ref = results[ONNX_RUNNER][i], results[TORCH_RUNNER][i]
        for name in output_names:
            a = np.asarray(ours[name])
            b = np.asarray(ref[name]) if name in ref else None
            exact = name in INDEX_OUTPUTS
            diff = None if b is None else _arrays_diff(a, b)
            passed = b is not None and diff is not None and verdicts[i].get(name, False)
            detail = "missing in the reference" if b is None else ("exact" if exact else "")
            out.append(Comparison("prefill", case.label, name, list(a.shape), None if b is None else list(b.shape),
                                  diff, 0.0 if exact else atol, 0.0 if exact else rtol, passed, detail))
    return out


def compare_generate(pipeline, bb, plan, maker: RequestMaker, cases, new_tokens: int,
                     dtype: str = "fp32") -> list[Comparison]:
    from .method.decoder import generate

    out = []
    for case in cases:
        ids, visual, grid = maker.make(case)
        ours = pipeline.generate(ids, visual, grid, max_new_tokens=new_tokens)
        ref_logits = []
        ref_tokens, ref_prefill = generate(bb, maker.reference_inputs(ids, visual, grid), plan, new_tokens,
                                           step_logits=ref_logits)
        out.append(token_comparison(case.label, ours.tokens, ref_tokens.numpy(),
                                    np.stack([x.numpy() for x in ref_logits], axis=1), PARITY[dtype][0]))
        pre = ours.prefill
        for name in INDEX_OUTPUTS:
            a, b = getattr(pre, name), getattr(ref_prefill, name)
            if a is None and b is None:
                continue
            a_shape = None if a is None else list(a.shape)
            b_shape = None if b is None else list(b.shape)
            diff = _arrays_diff(a, b.numpy()) if a is not None and b is not None else None
            out.append(Comparison("generate", case.label, name, a_shape, b_shape, diff, 0.0, 0.0,
                                  diff == 0.0, "exact"))
    return out


def token_comparison(label: str, ours: np.ndarray, ref: np.ndarray, ref_logits: np.ndarray | None = None,
                     atol: float = 0.0) -> Comparison:
    """Greedy tokens must be identical, up to a near-tie: where ours first differs, the reference's own
    logit for our token is within `atol` (the dtype's logits tolerance) of its best, so the graph's
    rounding may pick either and the two sequences legitimately part there. Nothing after that point
    is compared. ref_logits: [B, steps, vocab], the logits the reference chose each token from."""
    if ours.shape != ref.shape:
        return Comparison("generate", label, f"tokens[{ref.shape[-1]}]", list(ours.shape), list(ref.shape), None,
                          0.0, 0.0, False, "different lengths")
    passed, notes = True, []
    for row in range(ref.shape[0]):  # rows are independent requests: each may part at its own near-tie
        differ = np.flatnonzero(ours[row] != ref[row])
        if differ.size == 0:
            continue
        step = int(differ[0])
        note = f"row {row} first differs at step {step}: {int(ours[row, step])} vs reference {int(ref[row, step])}"
        tie = False
        if ref_logits is not None:
            margin = float(ref_logits[row, step].max() - ref_logits[row, step, int(ours[row, step])])
            tie = margin <= atol
            note += f" (reference margin {margin:.3g}{', a near-tie: equal up to there' if tie else ''})"
        passed &= tie
        notes.append(note)
    detail = "; ".join(notes) if notes else "identical"
    return Comparison("generate", label, f"tokens[{ref.shape[-1]}]", list(ours.shape), list(ref.shape), None,
                      atol, 0.0, passed, detail)


def generate_cases(manifest: Manifest) -> list[Case]:
    lo, hi = visual_counts(manifest)
    return [Case(1, 5, hi, 7, 10), Case(2, 4, lo, 8, 11), Case(2, 6, 0, 5, 12)]  # last: text only


def check_graphs(graphs_dir, model_path=None, random_init: bool = False, threads: int | None = None,
                 new_tokens: int = NEW_TOKENS, progress: bool = False, max_batch: int = 2) -> ParityReport:
    """Rebuild the reference for the manifest's model and compare; raises UserError for unusable input.

    A checkpoint's reference is layer-streamed (backbones.checkpoint.stream_layers): one or two decoder
    layers in memory at a time, fp32 compute, so a 7B check needs about a layer of memory on this side.
    A quantized folder's reference holds the folder's own dequantized linear weights (PARITY's
    "fp32-quantized" for fp32 graphs).
    """
    from .backbones.registry import get_entry, reference_backbone
    from .graphs.quantize import DequantizedWeights
    from .method.activations import fp16_overflow_layers, watch_layers
    from .runtime.pipeline import OrtPipeline

    began = time.perf_counter()
    pipeline = OrtPipeline(graphs_dir, threads=threads)  # verifies sha256, loads every graph
    manifest = pipeline.manifest
    name = manifest.get("model")
    entry = get_entry(str(name))  # unknown model -> UserError
    dtype = manifest.get("dtype", "fp32")
    if dtype not in ("fp32", "fp16"):
        raise UserError(f"{manifest.folder}: unsupported dtype {dtype!r} (known: fp32, fp16)")
    if dtype == "fp32" and manifest.get("quantization"):
        dtype = "fp32-quantized"  # the tolerance key; the precision the graphs compute in is still fp32
    bb = reference_backbone(entry.name, model_path=model_path, random_init=random_init, vision=False,
                            quantized=(lambda base: DequantizedWeights(base, manifest))
                            if manifest.get("quantization") else None)
    check_same_model(manifest, bb, pipeline.sessions)
    plan = reference_plan(manifest, bb.family, bb.num_layers)
    maker = RequestMaker(bb, dtype)
    report = ParityReport(str(manifest.folder), entry.name, dtype, None if plan is None else asdict(plan))
    prefill_cases = [c for c in default_cases(manifest) if c.batch <= max_batch]
    token_cases = [c for c in generate_cases(manifest) if c.batch <= max_batch]
    with watch_layers(bb.text_model.layers) as largest:
        with step("check: prefill graph vs reference", len(prefill_cases), "shapes", progress) as advance:
            report.comparisons += compare_prefill(manifest, bb, plan, maker, prefill_cases, dtype,
                                                  pipeline.sessions["prefill"])
            advance(len(prefill_cases))
        with step("check: greedy tokens vs reference", len(token_cases), "requests", progress) as advance:
            for case in token_cases:
                report.comparisons += compare_generate(pipeline, bb, plan, maker, [case], new_tokens, dtype)
                advance(1)
    report.activation_max = [float(f"{v:.4g}") for v in largest]
    report.fp16_overflow_layers = fp16_overflow_layers(largest)
    report.seconds = time.perf_counter() - began
    return report
