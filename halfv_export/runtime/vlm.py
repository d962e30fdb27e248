"""Image + prompt in, text out, on ONNX Runtime only (no torch): what `run`, Triton and a Jetson execute.

    image --preprocess.py--> pixels --vision.onnx--> visual_embeds [1, N, D] ----\
    prompt --text.py (chat template, tokenizer)--> ids with N placeholders ------ OrtPipeline.generate
                                                                                   -> tokens -> text
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import UserError
from ..core.manifest import Manifest
from .pipeline import Generation, OrtPipeline, make_session
from .preprocess import expand_prompt, vision_request
from .text import load_tokenizer, prompt_ids


@dataclass
class Answer:
    text: str
    tokens: list  # generated ids
    generation: Generation
    vision_ms: float

    @property
    def stats(self) -> dict:
        return {"vision_ms": self.vision_ms, **self.generation.stats}


class VlmPipeline:
    """The whole model from a graphs folder: vision graph + decoder graphs + tokenizer."""

    def __init__(self, graphs_dir: str | os.PathLike, threads: int | None = None, share_weights: bool = True,
                 one_shot: bool = False):
        """`one_shot`: for a single request (`run`): the vision session loads when the image is encoded and
        is released before the decoder sessions load, and the prefill session goes before decoding
        (OrtPipeline one_shot), so the peak memory is the largest stage's, not their sum. Otherwise every
        session loads here and stays (a server, an evaluation loop)."""
        self.manifest = Manifest.load(graphs_dir, verify=True)
        if "vision" not in self.manifest.get("graphs", {}):
            raise UserError(f"{self.manifest.folder} has no vision graph: export it again with this version")
        self.preprocess = self.manifest.graph("vision")["preprocess"]
        self.threads, self.share_weights, self.one_shot = threads, share_weights, one_shot
        self._vision = None if one_shot else self._vision_session()
        self._decoder = None if one_shot else self._decoder_pipeline()
        self.tokenizer = load_tokenizer(self.manifest.folder)
        self.config = self.manifest["config"]

    def _vision_session(self):
        return make_session(self.manifest.path("vision"), self.threads)

    def _decoder_pipeline(self) -> OrtPipeline:
        return OrtPipeline(self.manifest.folder, self.threads, self.share_weights, manifest=self.manifest,
                           one_shot=self.one_shot)

    @property
    def decoder(self) -> OrtPipeline:
        if self._decoder is None:
            self._decoder = self._decoder_pipeline()
        return self._decoder

    def encode(self, image, prompt: str):
        """(input_ids [1, S], visual_embeds [1, N, D], image_grid_thw or None) for one request."""
        request = vision_request([image], self.preprocess)
        self.check_visual_tokens(request.counts[0])
        session = self._vision if self._vision is not None else self._vision_session()
        began = time.perf_counter()
        features = session.run(None, request.feed)[0]
        vision_ms = (time.perf_counter() - began) * 1e3
        del session  # one_shot: the vision weights go before the decoder's load
        before, after = prompt_ids(self.tokenizer, self.config["family"], prompt, self.config.get("bos_token_id"))
        ids = expand_prompt(self.preprocess, request.counts[0], before, after).input_ids
        features = features.reshape(1, request.counts[0], -1)
        return ids[None], features, request.image_grid_thw, vision_ms

    def check_visual_tokens(self, count: int) -> None:
        """The manifest's visual-token range is what engines are profiled for: refuse images outside it."""
        limits = self.manifest.get("visual_tokens", {})
        low, high = int(limits.get("min", 1)), int(limits.get("max", count))
        if not low <= count <= high:
            raise UserError(f"{count} visual tokens is outside the range these graphs were built for "
                            f"({low}..{high}, manifest visual_tokens): use a smaller image or export with a wider range")

    def answer(self, image, prompt: str, max_new_tokens: int = 32) -> Answer:
        if not prompt:
            raise UserError("the prompt is empty")
        ids, visual, grid, vision_ms = self.encode(image, prompt)
        eos = self.config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        generation = self.decoder.generate(ids, visual, grid, max_new_tokens, eos)
        tokens = [int(t) for t in generation.tokens[0] if eos is None or t != eos]
        return Answer(self.tokenizer.decode(tokens), [int(t) for t in generation.tokens[0]], generation, vision_ms)


def as_image_array(pixels: np.ndarray):
    """A decoded HxWx3 uint8 array (e.g. from a Triton request) as a PIL image."""
    from PIL import Image

    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise UserError(f"image must be an HxWx3 uint8 array, got {array.dtype} {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError("image has zero size")
    return Image.fromarray(array, "RGB")
