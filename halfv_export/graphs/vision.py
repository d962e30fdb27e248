"""The vision graph of each family: pixels (+ host-computed layout) -> visual tokens as the LLM sees them.

Contract with the runtime (core/families builds every non-pixel input with numpy):

  qwen2_5_vl  pixel_values   [patches, 3*T*p*p] f32   processor patches (merge-block order)
              rotary_pos_ids [patches, 2] i64         (h, w) of each patch
              window_rows    [windows, window_len] i64  patches of each attention window, padded
              window_bias    [windows, window_len] f32  0 for a patch, MASK for padding (key bias)
              window_restore [patches] i64           row of each patch in the [windows*window_len] result
              full_rows / full_bias [frames, frame_len], full_restore [patches]  (full-attention blocks)
                                                 -> image_features [tokens, hidden]   tokens = patches / m^2
  llava       pixel_values   [images, 3, s, s] f32  -> image_features [images, tokens, hidden]
  llava_next  pixel_values   [tiles, 3, s, s] f32
              pack_index     [tokens] i64          -> image_features [tokens, hidden]

What transformers computes from the grid with data-dependent shapes (window index, cu_seqlens,
rotary positions, anyres unpad) is on the host; the graph only gathers with the given indices, so
every dim of the graph is an input dim. LLaVA-NeXT's unpad + image_newline packing is in the graph as
one Gather over [tile features; newline] because the newline is a weight: the host never needs it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..core.errors import UserError
from ..core.families.llava import llava_next_pack_index
from ..core.families.qwen2_5_vl import MAX_PIXELS, MIN_PIXELS, qwen_vision_inputs
from ..core.fileio import atomic_path
from ..core.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..core.manifest import sha256_file
from .wrappers import GraphSpec

OUTPUT = "image_features"
QWEN_INPUTS = ["pixel_values", "rotary_pos_ids", "window_rows", "window_bias", "window_restore",
               "full_rows", "full_bias", "full_restore"]


# -- shared pieces -----------------------------------------------------------------------------------
def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def take_rows(table, index):
    """table[index] along dim 0 as one ONNX Gather (plain indexing exports as GatherND)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


#   q, k, v [patches, heads, d]
#        |  Gather(rows)                 rows [groups, L]
#   [groups, L, heads, d] -> Transpose -> MatMul(q, k^T) * scale + bias[:, None, None, :] -> Softmax
#        -> MatMul(., v) -> Transpose/Reshape [groups*L, heads*d] -> Gather(restore) -> [patches, heads*d]
def grouped_attention(q, k, v, rows, bias, restore, scale: float):
    """Attention inside padded groups of patches (windows or frames); padded keys get `bias` MASK."""
    qg, kg, vg = (take_rows(t, rows).transpose(1, 2) for t in (q, k, v))  # [groups, heads, L, d]
    scores = torch.matmul(qg, kg.transpose(-1, -2)) * scale + bias[:, None, None, :]
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.matmul(probs, vg).transpose(1, 2)  # [groups, L, heads, d]
    return take_rows(out.reshape(-1, out.shape[-2] * out.shape[-1]), restore)


#   x [..., S, D] -> q/k/v Linear -> [..., heads, S, d] -> MatMul * scale -> Softmax -> MatMul -> out Linear
def full_attention(attn, x):
    """CLIP self-attention written out (no SDPA decomposition, no mask): same weights, same math."""
    heads = attn.num_heads
    shape = (*x.shape[:-1], heads, attn.head_dim)
    q, k, v = (proj(x).view(shape).transpose(-2, -3) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)
    out = torch.matmul(probs, v).transpose(-2, -3)
    return attn.out_proj(out.reshape(*x.shape[:-1], heads * attn.head_dim))


# -- Qwen2.5-VL --------------------------------------------------------------------------------------
#   pixel_values [P, 3*T*p*p] -> MatMul(patch weight^T) -> x [P, D]
#   rotary_pos_ids [P, 2] -> Cast * inv_freq -> Concat -> Cos, Sin [P, 1, d]
#   per block: x += proj(grouped_attention(rotary(qkv(RMSNorm(x))), window_* | full_*)); x += MLP(RMSNorm(x))
#   merger: RMSNorm -> Reshape [P/4, 4D] -> MLP -> image_features [P/4, hidden]
class QwenVisionGraph(nn.Module):
    """Qwen2.5-VL vision tower (patch embed, 2-D rotary, window/full blocks, 2x2 merger) on host layout."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.visual = bb.model.model.visual
        cfg = self.visual.config
        self.full_blocks = set(cfg.fullatt_block_indexes)
        self.heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads

    def forward(self, pixel_values, rotary_pos_ids, window_rows, window_bias, window_restore,
                full_rows, full_bias, full_restore):
        vis = self.visual
        # Conv3d with stride == kernel is one MatMul over the flattened patch (same C,T,p,p order)
        weight = vis.patch_embed.proj.weight
        x = pixel_values.to(weight.dtype) @ weight.reshape(weight.shape[0], -1).t()
        # rotary: angles of the h and w coordinates side by side, repeated for the two rotated halves
        rope = vis.rotary_pos_emb
        angles = (rotary_pos_ids[..., None].float() * rope.inv_freq).flatten(1)
        angles = torch.cat([angles, angles], dim=-1)
        cos = (angles.cos() * rope.attention_scaling)[:, None, :]
        sin = (angles.sin() * rope.attention_scaling)[:, None, :]
        for i, blk in enumerate(vis.blocks):
            rows, bias, restore = ((full_rows, full_bias, full_restore) if i in self.full_blocks
                                   else (window_rows, window_bias, window_restore))
            h = blk.norm1(x)
            q, k, v = blk.attn.qkv(h).reshape(-1, 3, self.heads, self.head_dim).unbind(1)
            q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
            k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
            x = x + blk.attn.proj(grouped_attention(q, k, v, rows, bias, restore, blk.attn.scaling))
            x = x + blk.mlp(blk.norm2(x))
        return vis.merger(x)


def _qwen_spec(bb: Backbone) -> GraphSpec:
    cfg = bb.config.vision_config
    # two images (2 frames for the full-attention blocks) whose grids are not multiples of the
    # window, so the traced example has padded windows; every dynamic dim has a distinct size
    side = cfg.window_size // cfg.patch_size
    grid = np.array([[1, side + cfg.spatial_merge_size, 2 * side + cfg.spatial_merge_size]] * 2)
    host = qwen_vision_inputs(grid, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
    patches = int(host["rotary_pos_ids"].shape[0])
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(patches, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2, generator=gen)
    args = (pixels,) + tuple(torch.from_numpy(host[name]) for name in QWEN_INPUTS[1:])
    dims = {"pixel_values": {0: "patches"}, "rotary_pos_ids": {0: "patches"},
            "window_rows": {0: "windows"}, "window_bias": {0: "windows"}, "window_restore": {0: "patches"},
            "full_rows": {0: "frames", 1: "frame_len"}, "full_bias": {0: "frames", 1: "frame_len"},
            "full_restore": {0: "patches"}}
    return GraphSpec("vision", QwenVisionGraph(bb), args, list(QWEN_INPUTS), [OUTPUT], dims)


# -- LLaVA family: CLIP tower + projector -------------------------------------------------------------
#   pixels [B, 3, s, s] -> Conv (patch embed) + CLS + positions -> LayerNorm
#   -> layers up to the feature layer (LayerNorm, full_attention, MLP) -> drop CLS -> projector MLP
class ClipFeatures(nn.Module):
    """CLIP up to the feature layer(s), CLS dropped for "default", then the multimodal projector."""

    def __init__(self, bb: Backbone):
        super().__init__()
        model = bb.model.model
        self.tower = model.vision_tower
        self.projector = model.multi_modal_projector
        layers = bb.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        n = len(self.tower.encoder.layers)
        # hidden_states[0] is the pre-LN embedding output, hidden_states[i] the output of layer i
        self.feature_states = [i if i >= 0 else n + 1 + i for i in layers]
        self.drop_cls = bb.config.vision_feature_select_strategy == "default"

    def forward(self, pixel_values):  # [batch, 3, s, s] -> [batch, tokens, hidden]
        h = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        states = [h]
        for layer in self.tower.encoder.layers[:max(self.feature_states)]:
            h = h + full_attention(layer.self_attn, layer.layer_norm1(h))
            h = h + layer.mlp(layer.layer_norm2(h))
            states.append(h)
        feats = torch.cat([states[i] for i in self.feature_states], dim=-1)
        if self.drop_cls:
            feats = feats[:, 1:]
        return self.projector(feats)


class LlavaVisionGraph(nn.Module):
    def __init__(self, bb: Backbone):
        super().__init__()
        self.features = ClipFeatures(bb)

    def forward(self, pixel_values):
        return self.features(pixel_values)


#   tiles [T, 3, s, s] -> CLIP + projector [T, n, D] -> Reshape [T*n, D] -> Concat(newline [1, D])
#        -> Gather(pack_index) -> [tokens, D]
class LlavaNextVisionGraph(nn.Module):
    """Per-tile features, then unpad + image_newline packing as one gather with a host index."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.features = ClipFeatures(bb)
        self.image_newline = bb.model.model.image_newline

    def forward(self, pixel_values, pack_index):
        feats = self.features(pixel_values)
        flat = feats.reshape(-1, feats.shape[-1])
        table = torch.cat([flat, self.image_newline[None].to(flat.dtype)], dim=0)
        return take_rows(table, pack_index)


def _llava_spec(bb: Backbone) -> GraphSpec:
    size = bb.config.vision_config.image_size
    gen = torch.Generator().manual_seed(0)
    if bb.family == "llava":
        pixels = torch.randn(2, 3, size, size, generator=gen)
        return GraphSpec("vision", LlavaVisionGraph(bb), (pixels,), ["pixel_values"], [OUTPUT],
                         {"pixel_values": {0: "images"}})
    if bb.config.vision_feature_select_strategy != "default":
        raise UserError("LLaVA-NeXT export supports vision_feature_select_strategy 'default' only")
    pinpoints = bb.config.image_grid_pinpoints
    sizes = [tuple(pinpoints[0]), tuple(pinpoints[-1])]  # two images of different shapes
    index = llava_next_pack_index(sizes, pinpoints, size, bb.config.vision_config.patch_size)
    tiles = int(index.max()) // (size // bb.config.vision_config.patch_size) ** 2
    pixels = torch.randn(tiles, 3, size, size, generator=gen)
    return GraphSpec("vision", LlavaNextVisionGraph(bb), (pixels, torch.from_numpy(index)),
                     ["pixel_values", "pack_index"], [OUTPUT],
                     {"pixel_values": {0: "tiles"}, "pack_index": {0: "tokens"}})


# -- export ------------------------------------------------------------------------------------------
def vision_spec(bb: Backbone) -> GraphSpec:
    """The vision graph of this backbone as module + example inputs + names + dynamic dims."""
    if bb.family == "qwen2_5_vl":
        return _qwen_spec(bb)
    if bb.family in ("llava", "llava_next"):
        return _llava_spec(bb)
    raise UserError(f"no vision graph for model family {bb.family!r}")


def preprocess_config(bb: Backbone) -> dict:
    """Plain settings for runtime/preprocess.py and core/families (goes into the manifest).

    Defaults are those of the family's transformers image processor for this config; a checkpoint
    folder's preprocessor_config.json (if the model was loaded from one) overrides mean/std/pixels.
    """
    cfg = bb.config
    vision = cfg.vision_config
    out = {"family": bb.family, "image_token_id": int(bb.image_token_id), "patch_size": int(vision.patch_size),
           "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": "bicubic"}
    if bb.family == "qwen2_5_vl":
        out.update(merge_size=int(vision.spatial_merge_size), temporal_patch_size=int(vision.temporal_patch_size),
                   window_size=int(vision.window_size), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                   vision_start_token_id=int(cfg.vision_start_token_id),
                   vision_end_token_id=int(cfg.vision_end_token_id))
    else:
        out.update(image_size=int(vision.image_size), shortest_edge=int(vision.image_size),
                   feature_select=cfg.vision_feature_select_strategy)
        if bb.family == "llava_next":
            out["image_grid_pinpoints"] = [[int(h), int(w)] for h, w in cfg.image_grid_pinpoints]
    source = str(getattr(cfg, "_name_or_path", "") or "")  # "" for the built-in tiny models
    processor_json = Path(source) / "preprocessor_config.json"
    if source and processor_json.is_file():
        try:
            proc = json.loads(processor_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{processor_json} is not valid JSON: {exc}") from None
        _apply_processor_json(out, proc)
    return out


PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _apply_processor_json(out: dict, proc: dict) -> None:
    for key in ("image_mean", "image_std"):
        if key in proc:
            out[key] = [float(v) for v in proc[key]]
    if proc.get("resample") in PIL_RESAMPLE_NAMES:
        out["resample"] = PIL_RESAMPLE_NAMES[proc["resample"]]
    size = proc.get("size") or {}
    if out["family"] == "qwen2_5_vl":
        out["min_pixels"] = int(proc.get("min_pixels", size.get("shortest_edge", out["min_pixels"])))
        out["max_pixels"] = int(proc.get("max_pixels", size.get("longest_edge", out["max_pixels"])))
        return
    if "shortest_edge" in size:
        out["shortest_edge"] = int(size["shortest_edge"])
    crop = proc.get("crop_size")
    if isinstance(crop, dict) and crop.get("height", out["image_size"]) != out["image_size"]:
        # the CLIP graph has a fixed input size: a different crop could never be fed to it
        raise UserError(f"preprocessor_config.json crops to {crop['height']} px but the vision tower takes "
                        f"{out['image_size']} px images")


def _io_entries(path: Path) -> tuple[list, list]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(value):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    return [entry(v) for v in model.graph.input], [entry(v) for v in model.graph.output]


def export_vision(bb: Backbone, out_path: str | os.PathLike, opset: int = 20, progress=None) -> dict:
    """Export the vision graph to `out_path` (atomically) and return its manifest entry.

    The entry has file, data (external weights file or None), sha256, inputs/outputs with symbolic
    dims, and "preprocess": the plain settings runtime/preprocess.py and core/families read.
    """
    if opset < 18:
        raise UserError(f"opset {opset} is below 18, the lowest the dynamo exporter supports")
    out_path = Path(out_path)
    spec = vision_spec(bb)
    if progress:
        progress(f"exporting vision graph ({bb.family}) to {out_path}")
    with torch.no_grad(), warnings.catch_warnings():
        # one dim name on several inputs is intended; the exporter warns about each reuse
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(spec.module.eval(), spec.args, input_names=spec.input_names,
                                    output_names=spec.output_names, dynamic_shapes=spec.dynamic_shapes,
                                    opset_version=opset, dynamo=True, verbose=False)
    data_name = f"{out_path.name}.data"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as staging:
        staged = Path(staging) / out_path.name
        program.save(staged)  # weights go to <name>.data only above ONNX's 2 GB limit
        staged_data = staged.with_name(data_name)
        has_data = staged_data.is_file()
        if has_data:
            with atomic_path(out_path.with_name(data_name)) as tmp:
                os.replace(staged_data, tmp)
        with atomic_path(out_path) as tmp:
            os.replace(staged, tmp)
    inputs, outputs = _io_entries(out_path)
    files = [out_path.name] + ([data_name] if has_data else [])
    return {"file": out_path.name, "data": data_name if has_data else None,
            "sha256": {name: sha256_file(out_path.with_name(name)) for name in files},
            "inputs": inputs, "outputs": outputs, "preprocess": preprocess_config(bb)}
