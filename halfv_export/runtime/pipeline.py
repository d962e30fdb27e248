"""The ONNX Runtime pipeline: embed -> pruned prefill -> greedy decode over the per-layer ragged KV cache.

Imports no torch, transformers, method or backbones (numpy, onnxruntime, profile and manifest only), so
it runs on a Jetson or inside a Triton Python model. Visual embeddings come from the caller for now.

    input_ids [B, S] --embed.onnx--> embeds --split at the image span--+ prefix_embeds [B, P, D]
    visual_embeds [B, N, D] (caller) ----------------------------------+ visual_embeds
    positions (host, positions.py) ------------------------------------+ suffix_embeds [B, T, D]
                                                                        v
                          prefill.onnx -> logits, kept_ivr, kept_ssr, present.{i}.key/value
                                                                        v (layer i: its own length)
    token --embed.onnx--> decode.onnx(token_embeds, position_ids, past.{i}.*) -> logits, present.{i}.*

Text-only requests (no image tokens): the pruned prefill graph needs N >= 1 visual tokens (keep
counts are max(1, floor(N * ratio)) and the selection reads the span), so the prompt goes through
the decode graph one token at a time, starting from an empty cache. Nothing is pruned then, exactly
as in the PyTorch reference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ..core.errors import UserError
from ..core.manifest import DECODER_ROLES, Manifest, past_name, present_name
from ..core.profile import Profile
from .positions import decode_positions, prompt_positions, visual_span
from .weights import SharedWeights

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def make_session(path: os.PathLike, threads: int | None = None, shared: dict | None = None,
                 quantization: dict | None = None) -> ort.InferenceSession:
    """A CPU session; a file ONNX Runtime cannot load becomes one UserError line.

    `shared`: initializer name -> OrtValue held by the caller (runtime/weights.py), the same objects for
    every session of a folder; prepacking is off then, since it would copy each of them per session.
    `quantization`: the manifest's record of int8/int4 weights. Those are not shared (ONNX Runtime maps
    them from the data file) and need prepacking (MatMulNBits without it dequantizes on every call);
    a DequantizeLinear -> MatMul that ONNX Runtime fuses computes at the manifest's accuracy level.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if quantization:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level",
                                         str(quantization.get("accuracy_level", 0)))
    if shared and not quantization:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if shared:
        for name, value in shared.items():
            options.add_initializer(name, value)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several kinds for a broken or unreadable model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"ONNX Runtime cannot load {path}: {first}") from None


class _Sessions(dict):
    """role -> ONNX Runtime session, loaded on first use."""

    def __init__(self, load):
        super().__init__()
        self._load = load

    def __missing__(self, role: str) -> ort.InferenceSession:
        session = self[role] = self._load(role)
        return session

    def release(self, role: str) -> None:
        self.pop(role, None)


@dataclass
class PrefillOutput:
    logits: np.ndarray  # [B, vocab] at the last prompt position
    cache: list  # per layer (key, value) [B, kv_heads, length_of_that_layer, head_dim]
    next_position: np.ndarray  # [B]: first generated token's position (continues the unpruned prompt)
    kept_ivr: np.ndarray | None = None  # [B, K] indices into the visual span
    kept_ssr: np.ndarray | None = None  # [B, K_ssr] indices into the visual span (SSR top-k only)
    visual_tokens: int = 0
    seconds: float = 0.0

    @property
    def kv_lengths(self) -> list[int]:
        return [k.shape[2] for k, _ in self.cache]


@dataclass
class Generation:
    tokens: np.ndarray  # [B, n] int64
    stats: dict = field(default_factory=dict)
    prefill: PrefillOutput | None = None  # logits, kept indices and the prompt cache


def cache_bytes(cache) -> list[int]:
    return [int(k.nbytes + v.nbytes) for k, v in cache]


class OrtPipeline:
    """One ORT session per graph of a verified graphs folder (manifest sha256 checked on load)."""

    def __init__(self, graphs_dir: str | os.PathLike, threads: int | None = None, share_weights: bool = True,
                 manifest: Manifest | None = None, one_shot: bool = False):
        """`share_weights`: one mapped copy of the decoder weights for all sessions, no prepacking (the
        default: about half the memory); False lets each session prepack its own copy (faster steps).
        `manifest`: the folder's manifest, already verified by the caller (else loaded and verified here).
        `one_shot`: for one generation (`run`): each session loads when first used and the prefill session
        is released once the prompt is in the cache, so a quantized model's prefill and decode weights
        (prepacked per session) are not held together. Otherwise all sessions load here and stay."""
        self.manifest = manifest if manifest is not None else Manifest.load(graphs_dir, verify=True)
        self.config = self.manifest.get("config", {})
        for key in ("num_layers", "num_kv_heads", "head_dim", "image_token_id", "position_rows"):
            if key not in self.config:
                raise UserError(f"{self.manifest.folder}: manifest config has no {key!r}")
        profile = self.manifest.get("profile")
        self.profile = Profile.from_dict(profile) if profile else None
        self.num_layers = int(self.config["num_layers"])
        self.position_rows = int(self.config["position_rows"])
        self.dtype = np.float16 if self.manifest.get("dtype") == "fp16" else np.float32
        self.threads, self.one_shot = threads, one_shot
        self.shared = SharedWeights(self.manifest) if share_weights else None
        self.sessions = _Sessions(self._load)
        if not one_shot:
            for role in DECODER_ROLES:
                self.sessions[role]

    # -- graph I/O -----------------------------------------------------------------------------------
    def _load(self, role: str) -> ort.InferenceSession:
        shared = self.shared.for_graph(self.manifest.graph(role)) if self.shared else None
        session = make_session(self.manifest.path(role), self.threads, shared, self.manifest.get("quantization"))
        self._check_io(role, session)
        return session

    def _check_io(self, role: str, session: ort.InferenceSession) -> None:
        expected = {
            "embed": [],
            "prefill": ["prefix_embeds", "visual_embeds", "suffix_embeds", "position_ids"],
            "decode": ["token_embeds", "position_ids"] + self._cache_names("past"),
        }[role]
        inputs = {i.name: i for i in session.get_inputs()}
        missing = [n for n in expected if n not in inputs]
        if missing:
            raise UserError(f"{self.manifest.path(role)} lacks inputs {missing}: not a halfv-export {role} graph")
        if role == "prefill":
            outputs = {o.name for o in session.get_outputs()}
            if "logits" not in outputs or not set(self._cache_names("present")) <= outputs:
                raise UserError(f"{self.manifest.path('prefill')} lacks logits/present outputs for "
                                f"{self.num_layers} layers")
        if role == "embed":
            self.embed_output = session.get_outputs()[0].name
            self.embed_input = session.get_inputs()[0].name
        float_input = {"prefill": "visual_embeds", "decode": "token_embeds"}.get(role)
        if float_input and ORT_DTYPES.get(inputs[float_input].type, np.float32) != self.dtype:
            raise UserError(f"{self.manifest.path(role)} takes {inputs[float_input].type}, the manifest says "
                            f"{self.manifest.get('dtype')}")

    def _cache_names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def _run(self, role: str, feeds: dict) -> dict:
        session = self.sessions[role]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        self.sessions["embed"]  # loads it (and learns its I/O names) in one_shot mode
        return self._run("embed", {self.embed_input: np.ascontiguousarray(input_ids, dtype=np.int64)})[
            self.embed_output]

    def empty_cache(self, batch: int) -> list:
        shape = (batch, int(self.config["num_kv_heads"]), 0, int(self.config["head_dim"]))
        return [(np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)) for _ in range(self.num_layers)]

    def decode_step(self, token_embeds: np.ndarray, position_ids: np.ndarray, cache) -> tuple[np.ndarray, list]:
        """One token [B, 1, D] over the per-layer cache: each layer's past keeps its own length."""
        feeds = {"token_embeds": token_embeds.astype(self.dtype, copy=False), "position_ids": position_ids}
        for i, (k, v) in enumerate(cache):
            feeds[past_name(i, "key")], feeds[past_name(i, "value")] = k, v
        out = self._run("decode", feeds)
        return out["logits"], [(out[present_name(i, "key")], out[present_name(i, "value")])
                               for i in range(self.num_layers)]

    # -- prefill ---------------------------------------------------------------------------------------
    def prefill(self, input_ids, visual_embeds=None, image_grid_thw=None) -> PrefillOutput:
        """Prompt ids [B, S] with N image placeholders (one span at the same place in every row), the
        caller's visual embeddings [B, N, D], and (Qwen) the image grid [B, 3] in patches."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise UserError(f"input_ids must be [batch, seq] with seq >= 1, got shape {list(ids.shape)}")
        start, count = visual_span(ids, int(self.config["image_token_id"]))
        positions, next_position = prompt_positions(ids, self.position_rows, int(self.config["image_token_id"]),
                                                    image_grid_thw, int(self.config.get("spatial_merge_size", 2)))
        for role in ("embed", "prefill" if count else "decode"):
            self.sessions[role]  # one_shot: loaded before the clock starts
        began = time.perf_counter()
        embeds = self.embed(ids)
        if count == 0:
            logits, cache = self._prefill_by_decode(embeds, positions)
            return PrefillOutput(logits, cache, next_position, seconds=time.perf_counter() - began)
        visual = np.asarray(visual_embeds) if visual_embeds is not None else None
        if visual is None or visual.shape != (ids.shape[0], count, embeds.shape[-1]):
            got = None if visual is None else list(visual.shape)
            raise UserError(f"visual_embeds must be [{ids.shape[0]}, {count}, {embeds.shape[-1]}] for this prompt, "
                            f"got {got}")
        feeds = {"prefix_embeds": embeds[:, :start], "visual_embeds": visual.astype(self.dtype, copy=False),
                 "suffix_embeds": embeds[:, start + count:], "position_ids": positions}
        out = self._run("prefill", feeds)
        cache = [(out[present_name(i, "key")], out[present_name(i, "value")]) for i in range(self.num_layers)]
        return PrefillOutput(out["logits"], cache, next_position, out.get("kept_ivr"), out.get("kept_ssr"),
                             visual_tokens=count, seconds=time.perf_counter() - began)

    def _prefill_by_decode(self, embeds: np.ndarray, positions: np.ndarray):
        """Text-only prompt through the decode graph, one token at a time from an empty cache."""
        cache = self.empty_cache(embeds.shape[0])
        logits = None
        for t in range(embeds.shape[1]):
            logits, cache = self.decode_step(embeds[:, t:t + 1], positions[..., t:t + 1], cache)
        return logits, cache

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, input_ids, visual_embeds=None, image_grid_thw=None, max_new_tokens: int = 16,
                 eos_token_id: int | None = None) -> Generation:
        """Greedy decoding; rows that reach eos keep emitting eos, and decoding stops when all have."""
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        pre = self.prefill(input_ids, visual_embeds, image_grid_thw)
        if self.one_shot:
            self.sessions.release("prefill")  # the prompt is in the cache: its weights can go
        token = pre.logits.argmax(axis=-1).astype(np.int64)
        finished = token == eos_token_id if eos_token_id is not None else np.zeros(token.shape, bool)
        tokens, cache = [token], pre.cache
        self.sessions["decode"]  # one_shot: loaded before the clock starts
        began = time.perf_counter()
        for step in range(max_new_tokens - 1):
            if finished.all():
                break
            embeds = self.embed(token[:, None])
            logits, cache = self.decode_step(embeds, decode_positions(pre.next_position, step, self.position_rows),
                                             cache)
            token = logits.argmax(axis=-1).astype(np.int64)
            if eos_token_id is not None:
                token = np.where(finished, eos_token_id, token)
                finished |= token == eos_token_id
            tokens.append(token)
        decode_seconds = time.perf_counter() - began
        return Generation(np.stack(tokens, axis=1), self._stats(pre, cache, len(tokens) - 1, decode_seconds), pre)

    def _stats(self, pre: PrefillOutput, cache, steps: int, decode_seconds: float) -> dict:
        n = pre.visual_tokens
        kept = {"visual": n, "ivr": n, "ssr": n}
        if pre.kept_ivr is not None:
            kept["ivr"] = kept["ssr"] = int(pre.kept_ivr.shape[1])
        if pre.kept_ssr is not None:
            kept["ssr"] = int(pre.kept_ssr.shape[1])
        prompt_bytes = cache_bytes(pre.cache)
        # what an unpruned cache of the same prompt would hold: every layer at the longest length
        full = max(pre.kv_lengths) if pre.cache else 0
        per_position = [b // max(length, 1) for b, length in zip(prompt_bytes, pre.kv_lengths)]
        return {
            "kept": kept,
            "prefill_ms": pre.seconds * 1e3,
            "decode_ms": decode_seconds * 1e3,
            "decode_steps": steps,
            "decode_ms_per_token": decode_seconds * 1e3 / steps if steps else None,
            "kv_lengths": pre.kv_lengths,
            "kv_bytes_per_layer": prompt_bytes,
            "kv_bytes": sum(prompt_bytes),
            "kv_bytes_unpruned": sum(p * full for p in per_position),
            "kv_bytes_final": sum(cache_bytes(cache)),
        }
