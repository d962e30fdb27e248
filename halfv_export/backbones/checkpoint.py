"""Weights without the model: a meta-device skeleton, and tensors read one at a time from where they live.

A 7B checkpoint does not fit twice in memory, so nothing here builds the whole model with weights:

    skeleton(entry, config, dtype)   the transformers model on the meta device (names, shapes, dtypes),
                                     with its non-persistent buffers (rotary inv_freq, position ids)
                                     computed for real by transformers' own _init_weights
    CheckpointWeights(folder, model) safetensors shards (+ index), checkpoint names mapped to the model's
                                     names by transformers' own conversion mapping, one tensor per call
    ModelWeights(model)              the same interface over an in-memory model (tiny and zoo models)
    materialize(model, keys, source) gives the listed parameters real storage from a source

Both sources hand out a tensor converted to the requested dtype, so the exporter and the layer-streamed
reference hold one tensor (or one layer) at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.errors import UserError

INDEX_NAME = "model.safetensors.index.json"


def skeleton_model(hf_class, config, dtype=torch.float32):
    """`hf_class(config)` on the meta device in `dtype`; non-persistent buffers real, on the CPU."""
    with torch.device("meta"):
        model = hf_class(config)
    model = model.to(dtype).eval()
    owners = set()
    for key, buffer in list(model.named_non_persistent_buffers()):
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        module._buffers[name] = torch.empty_like(buffer, device="cpu")
        owners.add(path)
    for path in sorted(owners):  # transformers recomputes rotary frequencies and position ids here
        _owning_pretrained(model, path)._init_weights(model.get_submodule(path))
    return model


def _owning_pretrained(model, path: str):
    """The innermost transformers PreTrainedModel containing submodule `path` (a CLIP tower inside LLaVA
    initialises its own embeddings): the one whose _init_weights knows that module."""
    from transformers import PreTrainedModel

    parts = path.split(".") if path else []
    for depth in range(len(parts), -1, -1):
        module = model.get_submodule(".".join(parts[:depth]))
        if isinstance(module, PreTrainedModel):
            return module
    return model


def skeleton(entry, config=None, dtype=torch.float32):
    """The registry entry's Backbone around a skeleton model (no weight storage)."""
    config = config if config is not None else entry.make_config()
    return entry.backbone(skeleton_model(entry.backbone.hf_class, config, dtype))


def _tied_sources(model) -> dict:
    """{tied key: the key whose tensor it shares} (lm_head.weight -> embed_tokens.weight when tied)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return dict(tied)


class ModelWeights:
    """Tensors of an in-memory model by state-dict key, converted on the way out."""

    def __init__(self, model):
        self.state = model.state_dict()

    def keys(self):
        return self.state.keys()

    def tensor(self, key: str, dtype) -> torch.Tensor:
        return self.state[key].detach().to(dtype)


class CheckpointWeights:
    """A Hugging Face safetensors checkpoint folder, read tensor by tensor (memory-mapped by safetensors)."""

    def __init__(self, folder: str | os.PathLike, model):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                raise UserError(f"{index} is not a safetensors index (no weight_map)") from None
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise UserError(f"{self.folder} has no *.safetensors weights")
            weight_map = {}
            for file in files:
                with safe_open(file, "pt") as handle:
                    weight_map.update(dict.fromkeys(handle.keys(), file.name))
        self._where = self._map_names(weight_map, model)  # model key -> (file, checkpoint key)
        self._safe_open = safe_open
        missing = [k for k in model.state_dict() if k not in self._where and k not in _tied_sources(model)]
        if missing:
            raise UserError(f"{self.folder}: checkpoint lacks {len(missing)} of the model's tensors "
                            f"(first: {missing[0]}); is it a checkpoint of this architecture?")
        for tied, source in _tied_sources(model).items():
            if tied not in self._where and source in self._where:
                self._where[tied] = self._where[source]

    @staticmethod
    def _map_names(weight_map: dict, model) -> dict:
        """Checkpoint names -> the model's, with the renamings transformers applies when it loads."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        meta = model.state_dict()
        where = {}
        for name, file in weight_map.items():
            key, _ = rename_source_key(name, renamings, [], model.base_model_prefix, meta)
            if key in meta:
                where[key] = (file, name)
        return where

    def keys(self):
        return self._where.keys()

    def tensor(self, key: str, dtype) -> torch.Tensor:
        try:
            file, name = self._where[key]
        except KeyError:
            raise UserError(f"{self.folder}: checkpoint has no tensor for {key}") from None
        # Opened per tensor: a shard kept open stays mapped, and every page read from it would count
        # in this process's resident memory until the end (a whole checkpoint, for an export).
        try:
            with self._safe_open(self.folder / file, "pt") as handle:
                return handle.get_tensor(name).to(dtype)
        except Exception as exc:  # safetensors raises its own kinds for a truncated or foreign file
            raise UserError(f"cannot read {name} from {self.folder / file}: {exc}") from None


def linear_weight_keys(model) -> dict[str, str]:
    """Every nn.Linear weight's state-dict name -> the first name of the same tensor (a tied lm_head's
    weight is first named as the embedding: the key the exporter stores it under)."""
    first = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(tensor), name)
    out = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, torch.nn.Linear):
            name = f"{path}.weight" if path else "weight"
            out[name] = first[id(module.weight)]
    return out


def materialize(model, keys, source, dtype) -> None:
    """Give the parameters/buffers `keys` of a skeleton model real CPU storage from `source`."""
    for key in keys:
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        value = source.tensor(key, dtype)
        if name in module._parameters:
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[name] = value


def release(model, keys) -> None:
    """Put the parameters `keys` back on the meta device (their storage is freed)."""
    for key in keys:
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        if name in module._parameters:
            old = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(torch.empty_like(old, device="meta"), requires_grad=False)


class LayerStream:
    """The decoder layers with weights loaded on access and released behind: the reference holds `keep`
    layers at a time (the selection at layer l reads layer l-1's projections, so keep >= 2).

    Indexing and iteration return the model's own layer modules, so forward hooks stay attached."""

    def __init__(self, model, layers, source, dtype, keep: int = 2):
        self.model, self.layers, self.source, self.dtype, self.keep = model, layers, source, dtype, keep
        path = next(name for name, module in model.named_modules() if module is layers)
        names = list(model.state_dict(keep_vars=True))
        self.keys = [[k for k in names if k.startswith(f"{path}.{i}.")] for i in range(len(layers))]
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int):
        index = range(len(self))[index]
        if index in self.loaded:
            self.loaded.remove(index)
        else:
            materialize(self.model, self.keys[index], self.source, self.dtype)
        self.loaded.append(index)
        while len(self.loaded) > self.keep:
            release(self.model, self.keys[self.loaded.pop(0)])
        return self.layers[index]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def stream_layers(bb, source, dtype=torch.float32, vision: bool = True):
    """Make a skeleton backbone usable as the reference: every weight outside the decoder layers in
    memory (embeddings, final norm, lm_head, and the vision tower unless `vision` is False: a caller
    that feeds visual embeddings itself), the layers streamed from `source`."""
    layers = bb.text_model.layers
    layer_ids = {id(t) for t in list(layers.parameters()) + list(layers.buffers())}
    text_ids = {id(t) for m in (bb.text_model, bb.model.lm_head) for t in list(m.parameters()) + list(m.buffers())}
    rest = [k for k, t in bb.model.state_dict(keep_vars=True).items()
            if id(t) not in layer_ids and t.is_meta and (vision or id(t) in text_ids)]
    materialize(bb.model, rest, source, dtype)
    bb.layer_source = LayerStream(bb.model, layers, source, dtype)
    return bb
