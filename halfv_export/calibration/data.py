"""Calibration samples (an image and a prompt each) and the one place that turns them into a model batch.

Two sources:
- built-in synthetic set (the default, so `calibrate` works out of the box): images of a few coloured
  shapes (rectangles, ellipses, triangles) on a plain background, drawn with PIL from a seed, each
  paired with a prompt from a fixed list. Sample i of seed s is always the same image and prompt.
- `--data DIR`: a folder with a `prompts.jsonl` file, one JSON object per line:

      {"image": "cat.png", "prompt": "What is the animal doing?"}
      {"image": "sub/chart.jpg", "prompt": "Summarise the chart."}

  "image" is a path relative to DIR (any format PIL reads), "prompt" the user text. Blank lines are
  skipped. A missing prompts.jsonl, a line that is not such an object, or an image that is missing or
  unreadable is a UserError naming the file and the line. Samples are taken in file order.

`make_batch(bb, image, prompt)` builds a batch of one request (our stand-in until the host-side
preprocessing exists): the transformers image processor of the family, built from the model config
without downloading anything, and input ids laid out as the family's chat format
    Qwen2.5-VL:  <|im_start|>user\\n <vision_start> <image>*N <vision_end> PROMPT<|im_end|>\\n<|im_start|>assistant\\n
    LLaVA-1.5:   <bos> USER: <image>*N \\nPROMPT ASSISTANT:
    LLaVA-NeXT:  <bos> [INST] <image>*N \\nPROMPT [/INST]
with N image placeholder tokens, one per visual token. Text goes through the checkpoint's
tokenizer.json when the model was loaded from a folder that has one. Models without a tokenizer
(the built-in tiny ones, --random-init, a checkpoint folder without tokenizer.json) use the byte
tokenizer of `halfv_export.runtime.text` fitted to the vocabulary: UTF-8 byte b -> id 10 + b (ids
10..265, clear of the special ids 0-2 and 1000-1003 of the tiny configs) where the vocabulary holds
that range clear of its special ids, else the bytes spread over the ids it has (transformers' test
configurations: 99 ids, image token 0 or 4). A vision start/end id that the vocabulary does not hold
(Qwen2.5-VL configs that keep the release's 151653 beside 99 ids) is left out of the span: positions
come from the image tokens and the grid, and the decoder never needs it.

Image sizes: Qwen2.5-VL resizes to multiples of 28 px within a pixel budget. Models with weights from
a checkpoint use 256..1024 visual tokens (256*28*28 .. 1024*28*28 px); models built without weights
(tiny, --random-init) use 112x112 .. 224x224 px (16..64 visual tokens) to stay fast. LLaVA-1.5 resizes
and centre-crops to the tower's square input; LLaVA-NeXT picks the best anyres grid among the config's
image_grid_pinpoints, with tiles of the tower's input size.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..backbones.base import Backbone, MultimodalBatch
from ..core.errors import UserError
from ..core.families import qwen2_5_vl
from ..runtime.text import ByteTokenizer, load_tokenizer, prompt_ids, special_token_ids

PROMPTS_FILE = "prompts.jsonl"
DEFAULT_SEED = 0

PROMPTS = [
    "Describe the image in detail.",
    "What shapes can you see, and what colour is each one?",
    "How many objects are in the picture?",
    "Which shape is the largest, and where is it?",
    "What colour is the background?",
    "Is there a triangle in the image? Answer yes or no.",
    "List the shapes from left to right.",
    "Which two shapes are closest to each other?",
]

# (height, width) of the synthetic images, multiples of 28 so Qwen keeps them as they are.
SYNTHETIC_SIZES = [(112, 112), (112, 168), (168, 112), (168, 168), (168, 224), (224, 168), (224, 224)]
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 170), "orange": (245, 140, 30), "black": (20, 20, 20), "cyan": (40, 200, 210)}
BACKGROUNDS = [(250, 250, 250), (235, 235, 220), (210, 225, 240), (60, 60, 70)]

CHECKPOINT_QWEN_PIXELS = (256 * qwen2_5_vl.PIXELS_PER_TOKEN, 1024 * qwen2_5_vl.PIXELS_PER_TOKEN)
NO_WEIGHTS_QWEN_PIXELS = (112 * 112, 224 * 224)

@dataclass(frozen=True)
class CalibrationSample:
    """One image and prompt; the image is drawn or read only when asked for (keeps memory flat)."""

    prompt: str
    origin: str  # "synthetic #i (seed s)" or "DIR/prompts.jsonl line n"
    path: Path | None = None
    seed: int | None = None

    def image(self) -> Image.Image:
        if self.path is None:
            return synthetic_image(self.seed)
        try:
            with Image.open(self.path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.origin}: cannot read image {self.path}: {exc}") from None


# -- synthetic set ---------------------------------------------------------------------------------
def synthetic_image(seed: int) -> Image.Image:
    """2-5 coloured shapes on a plain background, fully determined by the seed."""
    rng = random.Random(seed)
    height, width = rng.choice(SYNTHETIC_SIZES)
    img = Image.new("RGB", (width, height), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        colour = PALETTE[rng.choice(sorted(PALETTE))]
        w, h = rng.randint(width // 8, width // 2), rng.randint(height // 8, height // 2)
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        kind = rng.choice(["rectangle", "ellipse", "triangle"])
        if kind == "rectangle":
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        elif kind == "ellipse":
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        else:
            draw.polygon([(x + w // 2, y), (x, y + h), (x + w, y + h)], fill=colour)
    return img


def synthetic_samples(count: int, seed: int = DEFAULT_SEED) -> list[CalibrationSample]:
    return [CalibrationSample(PROMPTS[i % len(PROMPTS)], f"synthetic #{i} (seed {seed})", seed=seed * 100_003 + i)
            for i in range(count)]


# -- folder set ------------------------------------------------------------------------------------
def folder_samples(folder: str | os.PathLike, limit: int | None = None) -> list[CalibrationSample]:
    """Samples listed in DIR/prompts.jsonl (format in the module docstring), all checked before use."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a directory")
    listing = folder / PROMPTS_FILE
    if not listing.is_file():
        raise UserError(f"{listing} not found: --data needs a {PROMPTS_FILE} with lines like "
                        '{"image": "file.png", "prompt": "..."}')
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {listing}: {exc}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{listing} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("prompt"), str)):
            raise UserError(f'{where}: expected an object with string fields "image" and "prompt"')
        path = folder / entry["image"]
        if not path.is_file():
            raise UserError(f"{where}: image {entry['image']!r} not found in {folder}")
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some corrupt files
            raise UserError(f"{where}: cannot read image {entry['image']!r}: {exc}") from None
        samples.append(CalibrationSample(entry["prompt"], where, path=path))
    if not samples:
        raise UserError(f"{listing} lists no samples")
    return samples[:limit] if limit is not None else samples


# -- image + prompt -> batch -----------------------------------------------------------------------
def has_weights(bb: Backbone) -> bool:
    """True when the model came from a checkpoint folder (from_pretrained records it)."""
    name = getattr(bb.model, "name_or_path", "") or ""
    return bool(name) and Path(name).is_dir()


def tokenizer_for(bb: Backbone):
    """The checkpoint's tokenizer.json when there is one, else the byte tokenizer fitted to the vocabulary."""
    if has_weights(bb) and (Path(bb.model.name_or_path) / "tokenizer.json").is_file():
        return load_tokenizer(bb.model.name_or_path)
    return ByteTokenizer.within(bb.text_config.vocab_size, special_token_ids(bb.config))


def _folder_pixels(bb: Backbone, low: int, high: int) -> tuple[int, int]:
    """min/max_pixels from the checkpoint's preprocessor_config.json when it sets them (as the export does)."""
    if not has_weights(bb):
        return low, high
    path = Path(bb.model.name_or_path) / "preprocessor_config.json"
    try:
        proc = json.loads(path.read_text())
    except (OSError, ValueError):
        return low, high
    size = proc.get("size") or {}  # transformers 5 writes the pixel range as size.shortest/longest_edge
    return (int(proc.get("min_pixels") or size.get("shortest_edge", low)),
            int(proc.get("max_pixels") or size.get("longest_edge", high)))


def image_processor(bb: Backbone):
    """The family's transformers image processor (PIL backend), configured from the model config only."""
    from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil, Qwen2VLImageProcessorPil

    vision = bb.config.vision_config
    if bb.family == "qwen2_5_vl":
        low, high = CHECKPOINT_QWEN_PIXELS if has_weights(bb) else NO_WEIGHTS_QWEN_PIXELS
        low, high = _folder_pixels(bb, low, high)
        return Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, patch_size=vision.patch_size,
                                        merge_size=vision.spatial_merge_size,
                                        temporal_patch_size=vision.temporal_patch_size)
    tile = {"shortest_edge": vision.image_size}, {"height": vision.image_size, "width": vision.image_size}
    if bb.family == "llava":
        return CLIPImageProcessorPil(size=tile[0], crop_size=tile[1])
    if bb.family == "llava_next":
        return LlavaNextImageProcessorPil(image_grid_pinpoints=bb.config.image_grid_pinpoints, size=tile[0],
                                          crop_size=tile[1])
    raise ValueError(f"no image preprocessing for family {bb.family!r}")


def make_batch(bb: Backbone, image: Image.Image, prompt: str, tokenizer=None, processor=None) -> MultimodalBatch:
    """A batch of one request: the image through the family's processor, ids in the family's chat format."""
    tokenizer = tokenizer if tokenizer is not None else tokenizer_for(bb)
    processor = processor if processor is not None else image_processor(bb)
    pixels = processor(images=[image.convert("RGB")], return_tensors="pt")
    before_ids, after_ids = prompt_ids(tokenizer, bb.family, prompt, bb.text_config.bos_token_id)
    if bb.family == "qwen2_5_vl":
        grid = pixels["image_grid_thw"]
        count = int(grid.prod()) // bb.config.vision_config.spatial_merge_size ** 2
        vocab = bb.text_config.vocab_size
        start, end = ([i] if i is not None and 0 <= i < vocab else []
                      for i in (bb.config.vision_start_token_id, bb.config.vision_end_token_id))
        ids = before_ids + start + [bb.image_token_id] * count + end + after_ids
        return MultimodalBatch(torch.tensor([ids]), pixel_values=pixels["pixel_values"], image_grid_thw=grid)
    sizes = pixels.get("image_sizes")
    if bb.family == "llava":
        side = bb.config.vision_config.image_size // bb.config.vision_config.patch_size
        count = side * side + (1 if bb.config.vision_feature_select_strategy == "full" else 0)
    else:
        # Anyres counts (grid tiles, unpadding, one newline per row) come from the model itself.
        probe = MultimodalBatch(torch.zeros(1, 1, dtype=torch.long), pixels["pixel_values"], image_sizes=sizes)
        with torch.no_grad():
            count = bb.image_features(probe).shape[1]
    ids = before_ids + [bb.image_token_id] * count + after_ids
    return MultimodalBatch(torch.tensor([ids]), pixel_values=pixels["pixel_values"],
                           image_sizes=torch.as_tensor(sizes) if sizes is not None else None)
