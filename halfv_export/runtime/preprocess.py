"""Image -> vision-graph pixels on the host, and prompt expansion: numpy + PIL only (no torch).

Each function reproduces the PIL backend of a transformers image processor step by step (same
resample filter on the same uint8 RGB image, same float64 rescale then float32 normalise), so the
pixels equal the processor's output; tests/runtime/test_preprocess.py holds the comparison.

  Qwen2VLImageProcessor     smart_resize (multiples of patch*merge, min/max pixels) -> patches
                            [grid_h*grid_w, C*T*p*p] in merge-block order, image_grid_thw [1, 3]
  CLIPImageProcessor        shortest-edge resize, center crop                -> [1, 3, s, s]
  LlavaNextImageProcessor   best pinpoint, aspect resize + center pad, tiles
                            + the whole image squashed to one tile            -> [tiles, 3, s, s], image_sizes

The settings come from a plain dict (`cfg`, the vision graph's "preprocess" entry in the manifest):
family, patch_size, image_mean, image_std, resample and the per-family keys read below.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.errors import UserError

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # refuse larger files before decoding them
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


# -- loading -----------------------------------------------------------------------------------------
def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (what the processors do)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, bound-check and decode an image file into an RGB PIL image; UserError if unusable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"image file is empty: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # the header gives the size: check it before decoding anything
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise UserError(f"image has zero size ({width}x{height}): {path}")
                if width * height > max_pixels:
                    raise UserError(f"image is {width}x{height} = {width * height} pixels, above the limit of "
                                    f"{max_pixels}: {path}")
                img.load()
                return to_rgb(img)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"image is too large to decode safely: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # how PIL reports unreadable or truncated files
        raise UserError(f"cannot read image {path}: {exc}") from None


def _as_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        if image.width <= 0 or image.height <= 0:
            raise UserError(f"image has zero size ({image.width}x{image.height})")
        return to_rgb(image)
    return load_image(image)


# -- shared steps ------------------------------------------------------------------------------------
def _resize(image: Image.Image, height: int, width: int, cfg: dict) -> Image.Image:
    return image.resize((width, height), resample=RESAMPLE[cfg.get("resample", "bicubic")])


def _normalise(pixels: np.ndarray, cfg: dict) -> np.ndarray:
    """uint8 HWC -> float32 CHW: x/255 in float64, cast, then (x - mean)/std in float32."""
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.get("image_mean", OPENAI_CLIP_MEAN), dtype=np.float32)
    std = np.asarray(cfg.get("image_std", OPENAI_CLIP_STD), dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC center crop; an image smaller than the crop is zero-padded around its center first."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        canvas = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
        top, left = math.ceil((canvas.shape[0] - h) / 2), math.ceil((canvas.shape[1] - w) / 2)
        canvas[top:top + h, left:left + w] = pixels
        pixels, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top:top + height, left:left + width]


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    if width <= height:
        return int(edge * height / width), edge
    return edge, int(edge * width / height)


def _clip_tile(image: Image.Image, cfg: dict) -> np.ndarray:
    """Shortest-edge resize + center crop + normalise: [3, crop, crop]."""
    crop = int(cfg["image_size"])
    h, w = _shortest_edge_size(image.height, image.width, int(cfg.get("shortest_edge", crop)))
    pixels = np.asarray(_resize(image, h, w, cfg))
    return _normalise(_center_crop(pixels, crop, crop), cfg)


# -- Qwen2.5-VL --------------------------------------------------------------------------------------
def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of `factor`, area brought into [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is above 200:1 "
                        f"({width}x{height}); Qwen2.5-VL cannot take it")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [grid_h*grid_w, 3*T*p*p] float32 and image_grid_thw [1, 3] int64."""
    image = _as_rgb(image)
    patch, merge, temporal = int(cfg["patch_size"]), int(cfg["merge_size"]), int(cfg["temporal_patch_size"])
    height, width = smart_resize(image.height, image.width, patch * merge,
                                 int(cfg["min_pixels"]), int(cfg["max_pixels"]))
    chw = _normalise(np.asarray(_resize(image, height, width, cfg)), cfg)
    gh, gw = height // patch, width // patch
    # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, p, p): merge blocks outermost, each patch C-major
    blocks = chw.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    # a still image fills every temporal slot of the 3-D patch with the same frame
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], blocks.shape[:5] + (temporal, patch, patch))
    return {"pixel_values": np.ascontiguousarray(frames.reshape(gh * gw, 3 * temporal * patch * patch)),
            "image_grid_thw": np.array([[1, gh, gw]], dtype=np.int64)}


# -- LLaVA-1.5 ---------------------------------------------------------------------------------------
def clip_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [1, 3, s, s] float32 (CLIPImageProcessor)."""
    return {"pixel_values": _clip_tile(_as_rgb(image), cfg)[None]}


# -- LLaVA-NeXT --------------------------------------------------------------------------------------
def _fit_inside(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Aspect-preserving size that fills the target on its tighter side (ceil, clamped)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def llava_next_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [tiles, 3, s, s] float32 (base tile first, then the grid row-major), image_sizes [1, 2]."""
    from .vision_inputs import select_best_resolution

    image = _as_rgb(image)
    tile = int(cfg["image_size"])
    target_h, target_w = select_best_resolution((image.height, image.width), cfg["image_grid_pinpoints"])
    new_h, new_w = _fit_inside(image.height, image.width, target_h, target_w)
    fitted = np.asarray(_resize(image, new_h, new_w, cfg))
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas = np.zeros((target_h, target_w, 3), dtype=np.uint8)  # black letterbox, as the processor pads
    canvas[top:top + new_h, left:left + new_w] = fitted
    edge = int(cfg.get("shortest_edge", tile))
    tiles = [_resize(image, edge, edge, cfg)]  # the whole image, squashed to a square
    tiles += [Image.fromarray(canvas[y:y + tile, x:x + tile])
              for y in range(0, target_h, tile) for x in range(0, target_w, tile)]
    return {"pixel_values": np.stack([_clip_tile(t, cfg) for t in tiles]),
            "image_sizes": np.array([[image.height, image.width]], dtype=np.int64)}


PIXELS = {"qwen2_5_vl": qwen_pixels, "llava": clip_pixels, "llava_next": llava_next_pixels}


def image_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """The processor output for one image (PIL image or path) under this model's settings."""
    try:
        fn = PIXELS[cfg["family"]]
    except KeyError:
        raise UserError(f"no image preprocessing for model family {cfg.get('family')!r}") from None
    return fn(image, cfg)


# -- prompts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpandedPrompt:
    input_ids: np.ndarray  # [S] int64, one placeholder per visual token
    visual_start: int  # index of the first placeholder
    visual_count: int


def expand_prompt(cfg: dict, n_visual_tokens: int, text_ids_before, text_ids_after) -> ExpandedPrompt:
    """Text ids around the image placeholders: Qwen wraps them in vision_start/vision_end tokens."""
    if n_visual_tokens < 0:
        raise ValueError("n_visual_tokens must be >= 0")
    before = [int(i) for i in text_ids_before]
    after = [int(i) for i in text_ids_after]
    pads = [int(cfg["image_token_id"])] * n_visual_tokens
    if n_visual_tokens and cfg.get("vision_start_token_id") is not None:
        before = before + [int(cfg["vision_start_token_id"])]
        after = [int(cfg["vision_end_token_id"])] + after
    ids = np.asarray(before + pads + after, dtype=np.int64)
    return ExpandedPrompt(ids, len(before), n_visual_tokens)
