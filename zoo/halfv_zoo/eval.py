"""Accuracy of pruning methods on the shapes VQA test split, against their FLOPs speedup.

    test sample --encode (chat template, processor)--> DecoderInputs --generate(plan)--> answer text
    exact match with the scene's answer -> accuracy per (method, keep);
    relative accuracy = accuracy / unpruned accuracy;  FLOPs speedup from halfv_export/flops.py
    summed over the evaluated samples (each sample's own text and visual counts).

Methods (PyTorch reference, halfv_export.method):
    unpruned        no pruning
    halfv           HalfV, fps coverage, shipped profile with ivr_keep = keep
    halfv-oneshot   the same with one-shot coverage
    fastv           FastV at layer 2 keeping `keep` of the visual tokens
    random          random `keep` of the visual tokens at the profile's IVR layer (seed 0)
For a keep budget the topk SSR share is scaled with it (ssr_keep * keep / ivr_keep): the profile's ratio
between the two stages is kept, and ssr_keep <= ivr_keep stays true. That scaling is our rule.

With `graphs`, an exported graphs folder answers through the ONNX Runtime VlmPipeline instead; the
PyTorch reference runs the plan recorded in the folder's manifest, and the agreement between the two
answer lists is reported next to the accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import torch

from halfv_export.backbones.base import Backbone, DecoderInputs
from halfv_export.core.errors import UserError
from halfv_export.core.flops import DecoderDims, fastv_schedule, halfv_schedule, prefill_flops, unpruned_schedule
from halfv_export.method.decoder import generate
from halfv_export.core.plan import PruningPlan
from halfv_export.core.profile import Profile
from . import data, tokenizer as zoo_tokenizer
from .models import image_side
from .train import encode, processor_for

METHODS = ("unpruned", "halfv", "halfv-oneshot", "fastv", "random")
DEFAULT_KEEPS = (0.5, 0.25, 0.125)
FASTV_LAYER = 2
MAX_NEW_TOKENS = 8  # the longest answer word is 8 bytes; eos comes after it


def budget_profile(profile: Profile, keep: float) -> Profile:
    """The profile with ivr_keep = keep (topk SSR share scaled with it, see the module docstring)."""
    ssr_keep = profile.ssr_keep * keep / profile.ivr_keep if profile.ssr_keep is not None else None
    return dataclasses.replace(profile, ivr_keep=keep, ssr_keep=ssr_keep, calibration={})


def make_plan(method: str, profile: Profile, keep: float) -> PruningPlan | None:
    if method == "unpruned":
        return None
    if method in ("halfv", "halfv-oneshot"):
        return PruningPlan.halfv(budget_profile(profile, keep), "fps" if method == "halfv" else "oneshot")
    if method == "fastv":
        return PruningPlan.fastv(keep, layer=FASTV_LAYER)
    if method == "random":
        return PruningPlan.random(keep, layer=profile.ivr_layer, seed=0)
    raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def schedule(method: str, profile: Profile, keep: float, n_text: int, n_visual: int):
    layers = profile.num_layers
    if method == "unpruned":
        return unpruned_schedule(layers, n_text, n_visual)
    if method in ("halfv", "halfv-oneshot"):
        return halfv_schedule(budget_profile(profile, keep), n_text, n_visual)
    layer = FASTV_LAYER if method == "fastv" else profile.ivr_layer
    return fastv_schedule(layers, n_text, n_visual, keep, layer)


def eval_questions(count: int, start: int = 0) -> list[data.Sample]:
    return data.samples("test", count, start)


def answer_text(tokens, eos: int, tokenizer) -> str:
    ids = [int(t) for t in tokens]
    if eos in ids:
        ids = ids[:ids.index(eos)]
    return tokenizer.decode(ids).strip()


def prepare_questions(bb: Backbone, name: str, samples: list[data.Sample]) -> list[DecoderInputs]:
    """Each question rendered, preprocessed and run through the vision tower once: the decoder inputs every
    pruning plan starts from (they do not depend on the plan)."""
    side = image_side(name)
    processor = processor_for(bb, side)
    tokenizer = zoo_tokenizer.load()
    with torch.no_grad():
        return [bb.prepare(encode(bb, s, side, processor, tokenizer, with_answer=False)[0]) for s in samples]


def answers_for(bb: Backbone, questions: list[DecoderInputs], plan: PruningPlan | None) -> list[str]:
    """Greedy answers of the PyTorch reference under `plan` (None: unpruned)."""
    eos = bb.text_config.eos_token_id
    tokenizer = zoo_tokenizer.load()
    return [answer_text(generate(bb, q, plan, MAX_NEW_TOKENS, eos)[0][0], eos, tokenizer) for q in questions]


def reference_answers(bb: Backbone, name: str, samples: list[data.Sample], plan: PruningPlan | None) -> list[str]:
    return answers_for(bb, prepare_questions(bb, name, samples), plan)


def accuracy(samples: list[data.Sample], answers: list[str]) -> float:
    return sum(a == s.question.answer for s, a in zip(samples, answers)) / len(samples)


def by_kind(samples: list[data.Sample], answers: list[str]) -> dict:
    out = {}
    for kind in data.QUESTION_KINDS:
        rows = [(s, a) for s, a in zip(samples, answers) if s.question.kind == kind]
        if rows:
            out[kind] = round(sum(a == s.question.answer for s, a in rows) / len(rows), 4)
    return out


def token_counts(questions: list[DecoderInputs]) -> list[tuple[int, int]]:
    """(text tokens, visual tokens) of each prepared question's prompt."""
    return [(q.embeds.shape[1] - q.visual_count, q.visual_count) for q in questions]


def total_flops(dims: DecoderDims, counts, schedule_of: Callable) -> float:
    """Prefill FLOPs summed over the questions; schedule_of(text tokens, visual tokens) -> schedule."""
    return sum(prefill_flops(dims, schedule_of(t, n)) for t, n in counts)


def prepare_run(bb: Backbone, name: str, profile: Profile, count: int):
    """(samples, prepared questions, decoder dims, (text, visual) counts) of the first `count` test questions,
    after checking that the profile fits the model."""
    torch.set_num_threads(2)
    profile.check_backbone(bb.family, bb.num_layers, name)
    samples = eval_questions(count)
    questions = prepare_questions(bb, name, samples)
    return samples, questions, DecoderDims.from_config(bb.text_config), token_counts(questions)


def evaluate(bb: Backbone, name: str, profile: Profile, methods, keeps, count: int,
             progress: Callable[[str], None] = lambda line: None) -> dict:
    samples, questions, dims, counts = prepare_run(bb, name, profile, count)

    def flops(method, keep):
        return total_flops(dims, counts, lambda t, n: schedule(method, profile, keep, t, n))

    base_flops = flops("unpruned", 1.0)
    runs = [("unpruned", 1.0)] + [(m, k) for m in methods if m != "unpruned" for k in keeps]
    results, base_acc = [], None
    for method, keep in runs:
        began = time.perf_counter()
        answers = answers_for(bb, questions, make_plan(method, profile, keep))
        acc = accuracy(samples, answers)
        base_acc = acc if method == "unpruned" else base_acc
        row = {"method": method, "keep": keep, "accuracy": round(acc, 4),
               "relative_accuracy": round(acc / base_acc, 4) if base_acc else None,
               "flops_speedup": round(base_flops / flops(method, keep), 3), "by_kind": by_kind(samples, answers),
               "seconds": round(time.perf_counter() - began, 1)}
        results.append(row)
        progress(f"{method:14s} keep {keep:<6g} accuracy {acc:.3f} relative {row['relative_accuracy']} "
                 f"speedup {row['flops_speedup']}x")
    return {"model": name, "split": "test", "samples": count, "profile": profile.to_dict(),
            "visual_tokens": sorted({n for _, n in counts}), "text_tokens_mean": sum(t for t, _ in counts) / count,
            "fastv_layer": FASTV_LAYER, "random_layer": profile.ivr_layer, "max_new_tokens": MAX_NEW_TOKENS,
            "results": results}


def sweep_layers(bb: Backbone, name: str, profile: Profile, count: int,
                 progress: Callable[[str], None] = lambda line: None) -> dict:
    """HalfV accuracy for every (IVR layer, SSR layer) pair at the profile's budgets: the sensitivity to the
    stage layers that calibration picks (the profile's own pair is marked `calibrated`)."""
    samples, questions, dims, counts = prepare_run(bb, name, profile, count)
    base_flops = total_flops(dims, counts, lambda t, n: unpruned_schedule(profile.num_layers, t, n))
    base_acc = accuracy(samples, answers_for(bb, questions, None))
    progress(f"unpruned accuracy {base_acc:.3f}")
    results = []
    for ivr in range(1, profile.num_layers - 1):
        for ssr in range(ivr + 1, profile.num_layers):
            variant = dataclasses.replace(profile, ivr_layer=ivr, ssr_layer=ssr, calibration={})
            acc = accuracy(samples, answers_for(bb, questions, PruningPlan.halfv(variant)))
            speedup = base_flops / total_flops(dims, counts, lambda t, n, v=variant: halfv_schedule(v, t, n))
            results.append({"ivr_layer": ivr, "ssr_layer": ssr, "accuracy": round(acc, 4),
                            "relative_accuracy": round(acc / base_acc, 4) if base_acc else None,
                            "flops_speedup": round(speedup, 3),
                            "calibrated": (ivr, ssr) == (profile.ivr_layer, profile.ssr_layer)})
            progress(f"IVR {ivr} SSR {ssr}: accuracy {acc:.3f} speedup {speedup:.2f}x")
    return {"model": name, "split": "test", "samples": count, "profile": profile.to_dict(),
            "unpruned_accuracy": round(base_acc, 4), "results": results}


def plot_sweep(report: dict, path: str | os.PathLike) -> None:
    """Relative accuracy per (IVR, SSR) layer pair as a grid; the calibrated pair is outlined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = report["profile"]["num_layers"]
    grid = np.full((layers, layers), np.nan)
    value = {(r["ivr_layer"], r["ssr_layer"]): r["relative_accuracy"] if r["relative_accuracy"] is not None
             else r["accuracy"] for r in report["results"]}  # plain accuracy when unpruned scored 0
    for (ivr, ssr), v in value.items():
        grid[ivr, ssr] = v
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    image = ax.imshow(grid, vmin=min(0.5, np.nanmin(grid)), vmax=1.0, cmap="viridis", origin="lower")
    for row in report["results"]:
        i, s = row["ivr_layer"], row["ssr_layer"]
        ax.text(s, i, f"{value[i, s]:.2f}\n{row['flops_speedup']:.1f}x", ha="center", va="center",
                fontsize=7, color="white" if value[i, s] < 0.85 else "black")
        if row["calibrated"]:
            ax.add_patch(plt.Rectangle((s - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xlabel("SSR layer")
    ax.set_ylabel("IVR layer")
    ax.set_xticks(range(2, layers))
    ax.set_yticks(range(1, layers - 1))
    ax.set_xlim(1.5, layers - 0.5)
    ax.set_ylim(0.5, layers - 1.5)
    ax.set_title(f"{report['model']}: accuracy vs unpruned, FLOPs speedup\n(red: calibrated layers)", fontsize=9)
    fig.colorbar(image, ax=ax, label="relative accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def evaluate_graphs(bb: Backbone, name: str, graphs_dir: str | os.PathLike, count: int,
                    progress: Callable[[str], None] = lambda line: None) -> dict:
    """Accuracy of an exported graphs folder through VlmPipeline, and its agreement with the reference."""
    from halfv_export.core.manifest import Manifest
    from halfv_export.runtime.vlm import VlmPipeline

    manifest = Manifest.load(graphs_dir)
    if manifest.get("model") != name:
        raise UserError(f"{graphs_dir} holds graphs of {manifest.get('model')!r}, not {name!r}")
    profile = Profile.from_dict(manifest["profile"]) if manifest.get("profile") else None
    plan = PruningPlan.halfv(profile, manifest.get("coverage") or "fps") if profile is not None else None
    quant = manifest.get("quantization")
    weights = f"int{quant['bits']} block {quant['block_size']}" if quant else manifest.get("dtype", "fp32")
    label = f"graphs ({'halfv-' + manifest['coverage'] if profile is not None else 'unpruned'}, {weights})"
    samples = eval_questions(count)
    pipe = VlmPipeline(graphs_dir, threads=2)
    side = image_side(name)
    began = time.perf_counter()
    answers = [pipe.answer(s.image(side), s.question.prompt, MAX_NEW_TOKENS).text.strip() for s in samples]
    seconds = time.perf_counter() - began
    questions = prepare_questions(bb, name, samples)
    reference = answers_for(bb, questions, plan)
    agree = sum(a == r for a, r in zip(answers, reference)) / count
    dims = DecoderDims.from_config(bb.text_config)
    counts = token_counts(questions)
    base = total_flops(dims, counts, lambda t, n: unpruned_schedule(bb.num_layers, t, n))
    mine = total_flops(dims, counts, lambda t, n: halfv_schedule(profile, t, n)) if profile else base
    acc, ref_acc = accuracy(samples, answers), accuracy(samples, reference)
    progress(f"{label}: accuracy {acc:.3f}, reference {ref_acc:.3f}, agreement {agree:.3f}")
    return {"model": name, "split": "test", "samples": count, "graphs": str(Path(graphs_dir)),
            "profile": manifest.get("profile"), "coverage": manifest.get("coverage"), "weights": weights,
            "results": [{"method": label, "keep": profile.ivr_keep if profile else 1.0, "accuracy": round(acc, 4),
                         "reference_accuracy": round(ref_acc, 4), "agreement_with_reference": round(agree, 4),
                         "flops_speedup": round(base / mine, 3), "by_kind": by_kind(samples, answers),
                         "seconds": round(seconds, 1)}]}


def plot(report: dict, path: str | os.PathLike) -> None:
    """Relative accuracy against FLOPs speedup, one line per method (unpruned is the point at 1x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    methods = []
    for row in report["results"]:
        if row["method"] not in methods:
            methods.append(row["method"])
    for method in methods:
        rows = sorted((r for r in report["results"] if r["method"] == method), key=lambda r: r["flops_speedup"])
        rel = [r.get("relative_accuracy") if r.get("relative_accuracy") is not None else r["accuracy"] for r in rows]
        ax.plot([r["flops_speedup"] for r in rows], rel, marker="o", label=method)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("prefill FLOPs speedup (x)")
    ax.set_ylabel("relative accuracy (vs unpruned)" if "graphs" not in report else "accuracy")
    ax.set_title(f"{report['model']}: shapes VQA test, {report['samples']} questions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
