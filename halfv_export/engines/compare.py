"""TensorRT vs ONNX Runtime on the same inputs: the `check --backend trt` path (compare_trt).

Polygraphy's Comparator runs OnnxrtRunner (the graph on the CPU, the reference) and TrtRunner (the
engine) on identical feeds; each output is then compared here:

  float outputs   |trt - ort| <= atol + rtol * |ort| elementwise, per engine precision:
                    fp32 engine (TensorRT 11 on an fp32 graph):  1e-3 / 1e-3 (kernel order only)
                    fp16 engine (TensorRT 10 fp16 flag, or an fp16 graph): logits 5e-2 / 5e-2,
                    present KV 2e-2 / 2e-2 (fp16 has ~3 decimal digits; Polygraphy warns its 1e-5
                    defaults are too strict for fp16)
  kept indices    exact on fp32 engines; on fp16 engines at least 90% equal (near-tied scores
                  may swap under fp16 rounding; the count and order must match)

Feeds are realistic, not random noise: token embeddings come from embed.onnx on random ids, positions
are in range, and the decode graph's past is the prefill graph's own present output (ONNX Runtime).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import UserError
from ..core.manifest import INDEX_OUTPUTS, PAST_PREFIX, PRESENT_PREFIX, Manifest
from ..core.tolerances import ENGINE
from ..runtime.pipeline import make_session
from . import profiles as prof

FP16_INDEX_AGREEMENT = 0.9


def _np_dtype(spec: dict):
    return np.dtype(spec["dtype"])


def _positions(rows: int, batch: int, start: int, length: int) -> np.ndarray:
    pos = np.arange(start, start + length, dtype=np.int64)
    return np.broadcast_to(pos, (rows, batch, length) if rows == 3 else (batch, length)).copy()


class FeedMaker:
    """Feeds for the prefill and decode graphs of a graphs folder, at chosen sizes."""

    def __init__(self, manifest: Manifest, seed: int = 0):
        self.manifest = manifest
        self.config = manifest["config"]
        self.rng = np.random.default_rng(seed)
        self._sessions = {}

    def session(self, role: str):
        if role not in self._sessions:
            self._sessions[role] = make_session(self.manifest.path(role))
        return self._sessions[role]

    def inputs(self, role: str) -> dict:
        return {spec["name"]: spec for spec in self.manifest.graph(role)["inputs"]}

    def embeds(self, batch: int, length: int) -> np.ndarray:
        ids = self.rng.integers(0, self.config["vocab_size"], size=(batch, length), dtype=np.int64)
        return self.session("embed").run(None, {"input_ids": ids})[0]

    def prefill(self, batch: int, prefix: int, visual: int, suffix: int) -> dict:
        specs = self.inputs("prefill")
        seq = prefix + visual + suffix
        feed = {"prefix_embeds": self.embeds(batch, prefix), "visual_embeds": self.embeds(batch, visual),
                "suffix_embeds": self.embeds(batch, suffix),
                "position_ids": _positions(self.config["position_rows"], batch, 0, seq)}
        return {name: value.astype(_np_dtype(specs[name])) for name, value in feed.items()}

    def decode(self, batch: int, prefix: int, visual: int, suffix: int) -> dict:
        """One decode step after a real prefill (its present KV is the past)."""
        specs = self.inputs("decode")
        pre = self.prefill(batch, prefix, visual, suffix)
        session = self.session("prefill")
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, pre)))
        seq = prefix + visual + suffix
        feed = {"token_embeds": self.embeds(batch, 1),
                "position_ids": _positions(self.config["position_rows"], batch, seq, 1)}
        for name in specs:
            if name.startswith(PAST_PREFIX):
                feed[name] = outputs[PRESENT_PREFIX + name[len(PAST_PREFIX):]]
        return {name: value.astype(_np_dtype(specs[name])) for name, value in feed.items()}


def parity_feeds(manifest: Manifest, role: str, ranges: prof.Ranges, seed: int = 0) -> list[dict]:
    """Two feeds inside the engine profile: the smallest request, and the opt sizes at max batch."""
    maker = FeedMaker(manifest, seed)
    small = (ranges.batch.min, ranges.prefix.min, max(ranges.visual.min, 1), ranges.suffix.min)
    typical = (ranges.batch.max, ranges.prefix.opt, ranges.visual.opt, ranges.suffix.opt)
    if role == "prefill":
        return [maker.prefill(*small), maker.prefill(*typical)]
    if role == "decode":
        return [maker.decode(*small), maker.decode(*typical)]
    if role == "embed":
        ids = lambda b, n: maker.rng.integers(0, maker.config["vocab_size"], size=(b, n), dtype=np.int64)  # noqa: E731
        return [{"input_ids": ids(small[0], 1)}, {"input_ids": ids(typical[0], typical[1] + typical[3])}]
    raise UserError(f"no parity feeds for the {role} graph")


def _kind(name: str) -> str:
    if name == "logits":
        return "logits"
    return "present" if name.startswith(PRESENT_PREFIX) else "other"


def compare_outputs(ref: dict, test: dict, precision: str) -> dict:
    """Per-output verdicts of `test` against the reference outputs `ref`."""
    out = {}
    for name, expected in ref.items():
        got = test.get(name)
        entry = {"shape": list(np.shape(expected))}
        if got is None or np.shape(got) != np.shape(expected):
            entry.update(passed=False, error=f"shape {None if got is None else list(np.shape(got))} "
                                             f"!= {list(np.shape(expected))}")
        elif name in INDEX_OUTPUTS:
            agreement = float(np.mean(np.asarray(got) == np.asarray(expected))) if np.size(expected) else 1.0
            needed = 1.0 if precision == "fp32" else FP16_INDEX_AGREEMENT
            entry.update(agreement=agreement, required=needed, passed=agreement >= needed)
        else:
            atol, rtol = ENGINE[precision][_kind(name)]
            a, b = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
            diff = np.abs(a - b)
            entry.update(max_abs_diff=float(diff.max()) if diff.size else 0.0, atol=atol, rtol=rtol,
                         passed=bool(np.all(diff <= atol + rtol * np.abs(b))))
        out[name] = entry
    return out


def compare_runners(reference, runner, feeds: list[dict], precision: str) -> dict:
    """Run both Polygraphy runners with Comparator on `feeds` and compare every output."""
    from polygraphy.comparator import Comparator

    if precision not in ENGINE:
        raise UserError(f"precision must be one of {', '.join(ENGINE)}, got {precision!r}")
    results = Comparator.run([reference, runner], data_loader=feeds)
    (_, ref_iters), (_, test_iters) = list(results.items())
    iterations = []
    for feed, ref, test in zip(feeds, ref_iters, test_iters):
        outputs = compare_outputs(dict(ref), dict(test), precision)
        iterations.append({"inputs": {k: list(v.shape) for k, v in feed.items()}, "outputs": outputs,
                           "passed": all(o["passed"] for o in outputs.values())})
    return {"reference": reference.name, "runner": runner.name, "precision": precision,
            "iterations": iterations, "passed": all(i["passed"] for i in iterations)}


def engine_precision(build: dict) -> str:
    """fp16 when the builder could pick fp16 kernels (TRT 10 flag) or the graph itself is fp16."""
    return "fp16" if build.get("fp16") or build.get("dtype") == "fp16" else "fp32"


def compare_trt(graphs_dir, engines_dir, roles=("prefill", "decode"), seed: int = 0) -> dict:
    """TrtRunner (engines_dir) vs OnnxrtRunner (graphs_dir) for each role; a JSON-ready report."""
    from .builder import engine_path, import_tensorrt, load_build

    import_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    manifest = Manifest.load(graphs_dir)
    build = load_build(engines_dir)
    if build.get("model") != manifest["model"]:
        raise UserError(f"{engines_dir} holds engines for {build.get('model')!r}, not {manifest['model']!r}")
    r = build["ranges"]
    ranges = prof.Ranges(visual=prof.DimRange(*r["visual_tokens"]), prefix=prof.DimRange(*r["prefix_len"]),
                         suffix=prof.DimRange(*r["suffix_len"]), batch=prof.DimRange(*r["batch"]),
                         new_tokens=r["max_new_tokens"])
    precision = engine_precision(build)
    report = {"graphs": str(graphs_dir), "engines": str(engines_dir), "tensorrt": build.get("tensorrt"),
              "precision": precision, "roles": {}}
    for role in roles:
        feeds = parity_feeds(manifest, role, ranges, seed)
        reference = OnnxrtRunner(SessionFromOnnx(str(manifest.path(role)), providers=["cpu"]), name=f"ort-{role}")
        engine = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path(engines_dir, build, role)))),
                           name=f"trt-{role}")
        report["roles"][role] = compare_runners(reference, engine, feeds, precision)
    report["passed"] = all(v["passed"] for v in report["roles"].values())
    return report
