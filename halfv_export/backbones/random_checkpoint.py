"""A Hugging Face checkpoint with a registry model's release architecture and random weights.

`write_random_checkpoint("qwen2.5-vl-7b", "ckpt/")` writes what a user gets from the Hub (config.json,
generation_config.json, preprocessor_config.json, sharded safetensors + index) without downloading it, so a
deployment can be rehearsed at full size: disk, memory, export time.

Memory stays small at any size: the model is only built on the meta device (names, shapes, no storage),
each tensor is generated in fixed-size chunks from its own seeded generator and streamed into its shard
file, so peak memory is a couple of chunks, not a shard or a model. The safetensors files are written
byte for byte as the safetensors library writes them (header layout checked against it in the tests), and
the tensor names are those `save_pretrained` writes (transformers' own tied-weight removal and
saving-time renaming are applied to the meta model's state dict).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.families.qwen2_5_vl import MIN_PIXELS as QWEN_MIN_PIXELS
from ..core.families.qwen2_5_vl import RELEASE_MAX_PIXELS as QWEN_MAX_PIXELS
from ..core.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# dtype name -> (torch dtype, safetensors dtype tag)
DTYPES = {"bf16": (torch.bfloat16, "BF16"), "fp16": (torch.float16, "F16"), "fp32": (torch.float32, "F32")}
DEFAULT_SHARD_BYTES = 2_000_000_000  # save_pretrained's "2GB" is decimal too
CHUNK_ELEMENTS = 1 << 24  # values generated per step: 64 MB of float32, a fixed size so values never depend on it
DEFAULT_INIT_STD = 0.02

# The released image processors' settings (Qwen2.5-VL-*-Instruct, llava-hf/llava-1.5-7b-hf,
# llava-hf/llava-v1.6-mistral-7b-hf); the sizes that depend on the architecture come from the config.
_COMMON_PROCESSOR = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                     "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "resample": 3,
                     "rescale_factor": 1 / 255}


@dataclass(frozen=True)
class WrittenCheckpoint:
    path: Path
    parameters: int
    nbytes: int  # tensor bytes in the safetensors files
    shards: int
    seconds: float


# -- config -----------------------------------------------------------------------------------------
def _with_layer_count(sub_config, field: str, count: int):
    """`sub_config` with `field` = count; a `layer_types` list is re-derived (or cut/repeated) to match."""
    data = sub_config.to_dict()
    data[field] = count
    old_types = data.pop("layer_types", None)
    # the config class derives layer_types from its own rule (e.g. Qwen's max_window_layers) when absent
    new = type(sub_config).from_dict(data)
    if old_types is not None and len(getattr(new, "layer_types", None) or []) != count:
        new.layer_types = [old_types[i % len(old_types)] for i in range(count)]
    return new


def _clamp_feature_layer(value, depth: int):
    """A CLIP hidden-state index valid for a tower of `depth` layers (hidden states: embeddings + depth)."""
    if isinstance(value, (list, tuple)):
        return [_clamp_feature_layer(v, depth) for v in value]
    return min(value, depth) if value >= 0 else max(value, -(depth + 1))


def checkpoint_config(name: str, layers: int | None = None, vision_depth: int | None = None, dtype: str = "bf16"):
    """The registry model's config with the decoder and vision-tower depths overridden, consistently."""
    from .registry import get_entry

    entry = get_entry(name)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    for option, value in (("--layers", layers), ("--vision-depth", vision_depth)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UserError(f"{option} {value!r}: must be a positive integer")
    config = entry.make_config()
    if layers is not None:
        config.text_config = _with_layer_count(config.text_config, "num_hidden_layers", layers)
    if vision_depth is not None:
        vision = config.vision_config
        if hasattr(vision, "depth"):  # Qwen2.5-VL: window-attention blocks except the full-attention ones
            vision = _with_layer_count(vision, "depth", vision_depth)
            full = [i for i in vision.fullatt_block_indexes if i < vision_depth]
            vision.fullatt_block_indexes = full or [vision_depth - 1]
        else:  # CLIP (LLaVA): the projector reads hidden state `vision_feature_layer`
            vision = _with_layer_count(vision, "num_hidden_layers", vision_depth)
            config.vision_feature_layer = _clamp_feature_layer(config.vision_feature_layer, vision_depth)
        config.vision_config = vision
    config.dtype = DTYPES[dtype][0]
    return config


def preprocessor_config(config) -> dict:
    """preprocessor_config.json as the release has it, sizes from this config."""
    vision = config.vision_config
    if config.model_type == "qwen2_5_vl":
        return {**_COMMON_PROCESSOR, "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor", "min_pixels": QWEN_MIN_PIXELS,
                "max_pixels": QWEN_MAX_PIXELS,
                "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
                "patch_size": int(vision.patch_size), "merge_size": int(vision.spatial_merge_size),
                "temporal_patch_size": int(vision.temporal_patch_size)}
    side = int(vision.image_size)
    clip = {**_COMMON_PROCESSOR, "do_center_crop": True, "crop_size": {"height": side, "width": side},
            "size": {"shortest_edge": side}}
    if config.model_type == "llava_next":
        return {**clip, "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
                "aspect_ratio_setting": "anyres",
                "image_grid_pinpoints": [[int(h), int(w)] for h, w in config.image_grid_pinpoints]}
    return {**clip, "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor"}


# -- tensors ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str  # as save_pretrained writes it
    shape: tuple[int, ...]
    fill: str  # "normal", "ones" or "zeros"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _is_norm(module) -> bool:
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)) or \
        "norm" in type(module).__name__.lower()


def _fill(model, module_path: str | None, saved_name: str, ndim: int) -> str:
    """What a fresh model would hold: norm scales 1, biases 0, everything else (linears, embeddings) normal."""
    if saved_name.endswith(".bias"):
        return "zeros"
    if saved_name.endswith(("norm.weight", "layernorm.weight")):
        return "ones"
    if module_path is not None:
        parent, _, leaf = module_path.rpartition(".")
        if leaf == "weight" and ndim == 1 and _is_norm(model.get_submodule(parent)):
            return "ones"
    return "normal"


def saved_tensors(config, hf_class) -> tuple[list[TensorSpec], int]:
    """The tensors save_pretrained would write for `hf_class(config)`, in its order, and the parameter count.

    The model is built on the meta device; transformers' own save-time steps (keys ignored on save, tied
    weights kept once, loading-time renamings reverted) turn its state dict into the saved names.
    """
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    with torch.device("meta"):
        model = hf_class(config)
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    module_path = {id(t): name for name, t in state.items()}  # renaming keeps the tensor objects
    state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(state, model))
    specs = []
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise RuntimeError(f"{hf_class.__name__} saves a non-float tensor {name}: no random values for it")
        specs.append(TensorSpec(name, tuple(tensor.shape), _fill(model, module_path.get(id(tensor)), name,
                                                                   tensor.dim())))
    return specs, int(model.num_parameters())


def plan_shards(specs: list[TensorSpec], dtype: torch.dtype, shard_bytes: int) -> dict[str, list[TensorSpec]]:
    """File name -> tensors, split as save_pretrained splits (huggingface_hub's rule, on meta tensors)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    meta = {s.name: torch.empty(s.shape, dtype=dtype, device="meta") for s in specs}
    split = split_torch_state_dict_into_shards(meta, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=shard_bytes)
    by_name = {s.name: s for s in specs}
    return {file: [by_name[n] for n in names] for file, names in split.filename_to_tensors.items()}


def _tensor_seed(seed: int, name: str) -> np.random.SeedSequence:
    """Each tensor's own stream: its values depend on the seed and its name only, not on order or sharding."""
    return np.random.SeedSequence([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])


def _chunks(spec: TensorSpec, dtype: torch.dtype, seed: int, std: float):
    """The tensor's bytes at `dtype`, CHUNK_ELEMENTS values at a time (float32 draws, cast by torch)."""
    rng = np.random.default_rng(_tensor_seed(seed, spec.name)) if spec.fill == "normal" else None
    for start in range(0, spec.numel, CHUNK_ELEMENTS):
        count = min(CHUNK_ELEMENTS, spec.numel - start)
        if rng is not None:
            values = rng.standard_normal(count, dtype=np.float32)
            values *= np.float32(std)
        else:
            values = np.full(count, 1.0 if spec.fill == "ones" else 0.0, dtype=np.float32)
        if dtype == torch.float32:
            yield values
        else:
            yield torch.from_numpy(values).to(dtype).view(torch.uint8).numpy()


def safetensors_header(specs: list[TensorSpec], tag: str, itemsize: int) -> tuple[bytes, list[TensorSpec]]:
    """Header bytes and data order as the safetensors library writes one file of a single dtype.

    Layout: u64 little-endian header length, compact JSON ("__metadata__" first, then tensors sorted by
    name, which is also the data order), padded with spaces to a multiple of 8.
    """
    ordered = sorted(specs, key=lambda s: s.name)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for spec in ordered:
        size = spec.numel * itemsize
        header[spec.name] = {"dtype": tag, "shape": list(spec.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, ordered


def _write_shard(path: Path, specs: list[TensorSpec], dtype_name: str, seed: int, std: float, advance,
                 writer: ThreadPoolExecutor) -> None:
    dtype, tag = DTYPES[dtype_name]
    header, ordered = safetensors_header(specs, tag, dtype.itemsize)
    with open(path, "wb") as f:
        f.write(header)
        pending = None  # one write in flight on the writer thread while the next chunk is generated
        for spec in ordered:
            for chunk in _chunks(spec, dtype, seed, std):
                if pending is not None:
                    pending.result()
                pending = writer.submit(f.write, chunk)
                advance(chunk.nbytes)
        if pending is not None:
            pending.result()


# -- the checkpoint ---------------------------------------------------------------------------------
def _refuse_existing(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty; choose a new folder (nothing was written)")
    elif out.exists():
        raise UserError(f"--out {out} exists and is not a folder")


def write_checkpoint(config, hf_class, out_dir: str | os.PathLike, dtype: str = "bf16", seed: int = 0,
                     shard_bytes: int = DEFAULT_SHARD_BYTES, desc: str = "random-checkpoint") -> WrittenCheckpoint:
    """Write `hf_class(config)` with random weights into the new folder `out_dir` (see module docstring).

    Everything goes into a hidden folder next to `out_dir`, renamed to `out_dir` at the end: an existing
    non-empty `out_dir` is refused, before and at the rename (POSIX rename replaces only an empty folder).
    """
    from transformers import GenerationConfig

    from ..core.progress import step

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed {seed!r}: must be an integer >= 0")
    if shard_bytes <= 0:
        raise UserError(f"shard size {shard_bytes}: must be positive")
    out = Path(out_dir)
    _refuse_existing(out)
    began = time.perf_counter()
    specs, parameters = saved_tensors(config, hf_class)
    torch_dtype = DTYPES[dtype][0]
    shards = plan_shards(specs, torch_dtype, shard_bytes)
    nbytes = sum(s.numel for s in specs) * torch_dtype.itemsize
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < nbytes + 64 * 2**20:
        raise UserError(f"{out.parent} has {free / 1e9:.1f} GB free; the checkpoint needs {nbytes / 1e9:.1f} GB")
    std = float(getattr(config.get_text_config(), "initializer_range", None) or DEFAULT_INIT_STD)

    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # mkdir (not mkdtemp) so that the folder gets the user's umask, not mode 0700
    try:
        config.architectures = [hf_class.__name__]  # as model.save_pretrained records it (AutoModel reads it)
        config.dtype = torch_dtype  # config.json names the dtype the weights are stored in
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        processor = json.dumps(preprocessor_config(config), indent=2, sort_keys=True)
        (tmp / "preprocessor_config.json").write_text(processor + "\n")
        with ThreadPoolExecutor(max_workers=1) as writer, step(desc, total=nbytes, unit="B") as advance:
            for file, file_specs in shards.items():
                _write_shard(tmp / file, file_specs, dtype, seed, std, advance, writer)
        if len(shards) > 1:  # a single file is model.safetensors with no index, as save_pretrained does
            index = {"metadata": {"total_parameters": parameters, "total_size": nbytes},
                     "weight_map": {s.name: file for file, file_specs in shards.items() for s in file_specs}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise UserError(f"--out {out} was filled by something else while writing ({exc.strerror}); left as it "
                            f"was, nothing written") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return WrittenCheckpoint(out, parameters, nbytes, len(shards), time.perf_counter() - began)


def write_random_checkpoint(name: str, out_dir: str | os.PathLike, layers: int | None = None,
                            vision_depth: int | None = None, dtype: str = "bf16", seed: int = 0,
                            shard_bytes: int = DEFAULT_SHARD_BYTES) -> WrittenCheckpoint:
    """Registry model `name` (release architecture, depths overridable) with random weights into `out_dir`."""
    from .registry import get_entry

    config = checkpoint_config(name, layers, vision_depth, dtype)
    return write_checkpoint(config, get_entry(name).backbone.hf_class, out_dir, dtype=dtype, seed=seed,
                            shard_bytes=shard_bytes, desc=f"random-checkpoint {name}")
