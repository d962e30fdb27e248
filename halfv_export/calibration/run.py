"""The calibration pass: TME curves -> stage layers -> layer-skip probe -> a Profile (+ a PNG of the curves).

  pass 1, per sample:  prefill (unpruned, hidden states kept) -> visual/text TME at L+1 points, P_full
  average curves -> choose_stages -> IVR layer, SSR layer
  pass 2, per sample:  one prefill per layer l in SSR..L-2 with the visual rows frozen at l -> KL to P_full
  median of the per-layer mean KLs vs threshold -> "freeze" | "topk"

Samples are re-read in pass 2 instead of kept, so memory does not grow with the sample count.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import __version__
from ..backbones.base import Backbone
from ..backbones.registry import models
from ..core.errors import UserError
from ..core.families import family
from ..core.fileio import atomic_path
from ..method.entropy import DEFAULT_K, tme_curves
from ..core.profile import Profile
from ..core.versions import library_versions
from .data import CalibrationSample, image_processor, make_batch, tokenizer_for
from .probe import DEFAULT_KL_THRESHOLD, choose_mode, layer_skip_kl, probe_layers
from .stages import DECLINE_STEPS, WINDOW, choose_stages

# Without a shipped profile the family's default ratios apply (core/families, from the paper's table).
# ssr_keep is needed only when the probe says "topk"; the LLaVA family then borrows Qwen's 5%.
FALLBACK_SSR_KEEP = 0.05

# progress(phase, done, total): called after each sample of each pass.
Progress = Callable[[str, int, int], None]


def _ratios(bb: Backbone, model_name: str) -> tuple[dict, str]:
    """(ivr_keep, anchor_share, ssr_keep) from the model's shipped profile, else the family defaults."""
    entry = models().get(model_name)
    if entry is not None and entry.profile_path.is_file():
        shipped = entry.shipped_profile()
        return (dict(ivr_keep=shipped.ivr_keep, anchor_share=shipped.anchor_share, ssr_keep=shipped.ssr_keep),
                f"shipped profile {entry.profile}")
    return dict(family(bb.family).default_ratios), f"{bb.family} defaults"


def _versions() -> dict:
    return {"halfv_export": __version__, "torch": torch.__version__,
            **library_versions(("transformers", "numpy", "pillow"))}


def calibrate(bb: Backbone, model_name: str, samples: Sequence[CalibrationSample], k: int = DEFAULT_K,
              kl_threshold: float = DEFAULT_KL_THRESHOLD, progress: Progress | None = None,
              source: str = "synthetic") -> Profile:
    """Measure the stage layers and the SSR mode of `bb` on `samples`; ratios come from `_ratios`."""
    if not samples:
        raise UserError("calibration needs at least one sample")
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    if not kl_threshold > 0:
        raise UserError(f"the KL threshold must be > 0, got {kl_threshold}")
    progress = progress or (lambda phase, done, total: None)
    tokenizer, processor = tokenizer_for(bb), image_processor(bb)
    total = len(samples)

    def inputs_of(sample: CalibrationSample):
        return bb.prepare(make_batch(bb, sample.image(), sample.prompt, tokenizer, processor))

    visual_curves, text_curves, full_logits, visual_counts = [], [], [], []
    for done, sample in enumerate(samples, start=1):
        inputs = inputs_of(sample)
        visual, text, logits = tme_curves(bb, inputs, k)
        visual_curves.append(visual)
        text_curves.append(text)
        full_logits.append(logits)
        visual_counts.append(inputs.visual_count)
        progress("TME curves", done, total)
    visual_tme = [statistics.fmean(col) for col in zip(*visual_curves)]
    text_tme = [statistics.fmean(col) for col in zip(*text_curves)]
    stages = choose_stages(visual_tme, bb.num_layers)

    probed = probe_layers(stages.ssr_layer, bb.num_layers)
    per_sample = []
    if probed:
        for done, (sample, logits) in enumerate(zip(samples, full_logits), start=1):
            per_sample.append(layer_skip_kl(bb, inputs_of(sample), probed, logits))
            progress("layer-skip probe", done, total)
    layer_kls = [statistics.fmean(col) for col in zip(*per_sample)]
    mode, median_kl = choose_mode(layer_kls, kl_threshold)

    ratios, ratios_from = _ratios(bb, model_name)
    if mode == "topk" and ratios["ssr_keep"] is None:
        ratios["ssr_keep"], ratios_from = min(FALLBACK_SSR_KEEP, ratios["ivr_keep"]), \
            f"{ratios_from}; ssr_keep {FALLBACK_SSR_KEEP} (Qwen default, the shipped profile freezes)"
    return Profile(
        backbone=bb.family, num_layers=bb.num_layers, ivr_layer=stages.ivr_layer, ssr_layer=stages.ssr_layer,
        ssr_mode=mode, model=model_name, source="calibrated", **ratios,
        calibration={
            "tme": {"k": k, "units": "nats", "points": "input of each layer, then the final output",
                    "visual": visual_tme, "text": text_tme, "visual_smoothed": stages.smoothed},
            "stage_rule": {"smoothing_window": WINDOW, "decline_steps": DECLINE_STEPS,
                           "ivr_clamp": [1, max(1, bb.num_layers // 4)]},
            "probe": {"layers": probed, "kl": layer_kls, "median_kl": median_kl,
                      "threshold": kl_threshold},
            "samples": {"count": total, "source": source, "visual_tokens": visual_counts},
            "ratios_from": ratios_from,
            "versions": _versions(),
        })


def mode_reason(profile: Profile) -> str:
    """One line on why the SSR mode was chosen."""
    probe = profile.calibration["probe"]
    if probe["median_kl"] is None:
        return "SSR layer is the last layer: nothing to probe, freezing it is exact"
    sign = "<" if probe["median_kl"] < probe["threshold"] else ">="
    return f"median layer-skip KL {probe['median_kl']:.2e} {sign} threshold {probe['threshold']:g}"


def plot_profile(profile: Profile, path: str | Path) -> None:
    """PNG (written atomically): visual and text TME per layer with the IVR and SSR layers marked, and
    the probe's KL per layer against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tme, probe = profile.calibration["tme"], profile.calibration["probe"]
    points = list(range(len(tme["visual"])))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), height_ratios=[2, 1], constrained_layout=True)
    # Stage I | II | III as shaded bands behind the curves.
    bands = ((0, profile.ivr_layer, "I", "0.97"), (profile.ivr_layer, profile.ssr_layer, "II", "0.93"),
             (profile.ssr_layer, points[-1], "III", "0.89"))
    for lo, hi, name, shade in bands:
        top.axvspan(lo, hi, color=shade, zorder=0)
        top.text((lo + hi) / 2, 0.02, name, transform=top.get_xaxis_transform(), ha="center", color="0.4")
    top.plot(points, tme["visual"], "o-", color="tab:blue", label="visual tokens")
    top.plot(points, tme["visual_smoothed"], "--", color="tab:blue", alpha=0.5, label="visual (smoothed)")
    top.plot(points, tme["text"], "s-", color="tab:orange", label="text tokens")
    for layer, name, colour in ((profile.ivr_layer, "IVR", "tab:green"), (profile.ssr_layer, "SSR", "tab:red")):
        top.axvline(layer, color=colour, linestyle=":")
        top.text(layer, 0.97, f"{name} layer {layer} ", transform=top.get_xaxis_transform(), rotation=90,
                 ha="right", va="top", color=colour, bbox=dict(facecolor="white", alpha=0.7, edgecolor="none"))
    top.set_xlabel(f"layer (point l = input of layer l; {points[-1]} = final output)")
    top.set_ylabel(f"TME, top-{tme['k']} (nats)")
    top.set_title(f"{profile.model}: stages from {profile.calibration['samples']['count']} samples")
    top.legend(loc="best", fontsize="small")
    if probe["layers"]:
        bottom.semilogy(probe["layers"], [max(v, 1e-12) for v in probe["kl"]], "o-", color="tab:purple",
                        label="KL(frozen || full)")
        bottom.axhline(probe["threshold"], color="gray", linestyle="--", label=f"threshold {probe['threshold']:g}")
        bottom.legend(loc="best", fontsize="small")
    else:
        bottom.set_yticks([])
        bottom.text(0.5, 0.5, "no layer probed", transform=bottom.transAxes, ha="center", va="center")
    bottom.set_xlabel("layer with visual tokens frozen")
    bottom.set_ylabel("KL (nats)")
    bottom.set_title(f"SSR mode {profile.ssr_mode}: {mode_reason(profile)}", fontsize="medium")
    bottom.set_xlim(-0.5, points[-1] + 0.5)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def write_outputs(profile: Profile, json_path: str | Path) -> Path:
    """Profile JSON and its PNG next to it (same stem). Neither replaces an old file unless both were made."""
    json_path = Path(json_path)
    png_path = json_path.with_suffix(".png")
    if json_path.suffix.lower() == ".png":
        raise UserError(f"--out {json_path} must name the profile JSON; the PNG goes next to it")
    with atomic_path(json_path) as tmp_json:
        profile.save(tmp_json)
        plot_profile(profile, png_path)
    return png_path
