"""Image loading and the pixel steps the families' processors share: numpy + PIL only (no torch).

Each step reproduces the PIL backend of transformers' image processors (same resample filter on the same uint8
RGB image, same float64 rescale then float32 normalise), so the families' pixels equal the processors' output.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from PIL import Image

from .errors import UserError

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # refuse larger files before decoding them
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


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


def as_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        if image.width <= 0 or image.height <= 0:
            raise UserError(f"image has zero size ({image.width}x{image.height})")
        return to_rgb(image)
    return load_image(image)


def resize(image: Image.Image, height: int, width: int, cfg: dict) -> Image.Image:
    return image.resize((width, height), resample=RESAMPLE[cfg.get("resample", "bicubic")])


def normalise(pixels: np.ndarray, cfg: dict) -> np.ndarray:
    """uint8 HWC -> float32 CHW: x/255 in float64, cast, then (x - mean)/std in float32."""
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.get("image_mean", OPENAI_CLIP_MEAN), dtype=np.float32)
    std = np.asarray(cfg.get("image_std", OPENAI_CLIP_STD), dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC center crop; an image smaller than the crop is zero-padded around its center first."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        canvas = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
        top, left = math.ceil((canvas.shape[0] - h) / 2), math.ceil((canvas.shape[1] - w) / 2)
        canvas[top:top + h, left:left + w] = pixels
        pixels, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top:top + height, left:left + width]


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    if width <= height:
        return int(edge * height / width), edge
    return edge, int(edge * width / height)


def clip_tile(image: Image.Image, cfg: dict) -> np.ndarray:
    """Shortest-edge resize + center crop + normalise: [3, crop, crop]."""
    crop = int(cfg["image_size"])
    h, w = shortest_edge_size(image.height, image.width, int(cfg.get("shortest_edge", crop)))
    pixels = np.asarray(resize(image, h, w, cfg))
    return normalise(center_crop(pixels, crop, crop), cfg)

