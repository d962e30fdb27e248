"""OrtPipeline on exported tiny graphs: greedy decoding over the ragged per-layer cache equals the
PyTorch reference, text-only prompts, stats, bad requests, and no torch anywhere in the runtime."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from halfv_export.core.errors import UserError
from halfv_export.method import PruningPlan, generate
from halfv_export.core.profile import shipped_profile
from halfv_export.runtime.pipeline import OrtPipeline
from tests.conftest import TINY, TINY_IMAGES, tiny_backbone
from tests.runtime.exported import copy_graphs, exported_graphs

NEW_TOKENS = 16


@functools.lru_cache(maxsize=None)
def pipeline(name: str) -> OrtPipeline:
    return OrtPipeline(exported_graphs(name), threads=1)


def request(bb, name, image_index, batch=2, seed=3):
    """A real request: the tiny vision tower's features for random pixels, scattered into the prompt."""
    image = TINY_IMAGES[name][image_index % len(TINY_IMAGES[name])]
    mm = bb.example_batch(batch, image, text_before=5, text_after=7, seed=seed)
    inputs = bb.prepare(mm)
    visual = inputs.embeds[:, inputs.visual_start:inputs.visual_start + inputs.visual_count].numpy()
    grid = None if mm.image_grid_thw is None else mm.image_grid_thw.numpy()
    return mm.input_ids.numpy(), visual, grid, inputs


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_generate_equals_reference_over_ragged_cache(name):
    bb, profile = tiny_backbone(name), shipped_profile(name)
    plan = PruningPlan.halfv(profile)
    pipe = pipeline(name)
    for image_index in range(len(TINY_IMAGES[name])):
        ids, visual, grid, inputs = request(bb, name, image_index)
        ours = pipe.generate(ids, visual, grid, max_new_tokens=NEW_TOKENS)
        ref_tokens, ref = generate(bb, inputs, plan, max_new_tokens=NEW_TOKENS)
        assert ours.tokens.shape == (2, NEW_TOKENS)
        np.testing.assert_array_equal(ours.tokens, ref_tokens.numpy())
        assert np.abs(ours.prefill.logits - ref.logits.numpy()).max() <= 1e-4
        np.testing.assert_array_equal(ours.prefill.kept_ivr, ref.kept_ivr.numpy())
        if profile.ssr_mode == "topk":
            np.testing.assert_array_equal(ours.prefill.kept_ssr, ref.kept_ssr.numpy())
        else:
            assert ours.prefill.kept_ssr is None

        # the cache really is ragged, and each layer kept its own length through decoding
        n, seq = inputs.visual_count, ids.shape[1]
        assert ours.stats["kv_lengths"] == ref.kv_lengths
        assert len(set(ref.kv_lengths)) >= 2 and max(ref.kv_lengths) == seq
        steps = NEW_TOKENS - 1
        final = [2 * k.size * k.itemsize for k, _ in ours.prefill.cache]
        assert ours.stats["kv_bytes_per_layer"] == final
        per_position = 2 * 2 * bb.num_kv_heads * bb.head_dim * 4  # k+v, batch 2, fp32
        assert ours.stats["kv_bytes"] == per_position * sum(ref.kv_lengths)
        assert ours.stats["kv_bytes_final"] == per_position * (sum(ref.kv_lengths) + steps * bb.num_layers)
        assert ours.stats["kv_bytes_unpruned"] == per_position * seq * bb.num_layers > ours.stats["kv_bytes"]
        ssr = profile.ssr_count(n) if profile.ssr_mode == "topk" else profile.ivr_count(n)
        assert ours.stats["kept"] == {"visual": n, "ivr": profile.ivr_count(n), "ssr": ssr}
        assert ours.stats["decode_steps"] == steps and ours.stats["prefill_ms"] > 0


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_text_only_prompt_runs_through_the_decode_graph(name):
    bb = tiny_backbone(name)
    mm = bb.example_batch(2, None, text_before=6, text_after=5, seed=4)
    ours = pipeline(name).generate(mm.input_ids.numpy(), max_new_tokens=8)
    ref_tokens, ref = generate(bb, bb.prepare(mm), PruningPlan.halfv(shipped_profile(name)), max_new_tokens=8)
    np.testing.assert_array_equal(ours.tokens, ref_tokens.numpy())
    assert ours.prefill.kept_ivr is None and ours.stats["kept"] == {"visual": 0, "ivr": 0, "ssr": 0}
    assert ours.stats["kv_lengths"] == ref.kv_lengths == [11] * bb.num_layers


def test_eos_rows_keep_emitting_eos():
    name = "tiny-qwen2.5-vl"
    bb = tiny_backbone(name)
    ids, visual, grid, inputs = request(bb, name, 1, seed=5)
    free = pipeline(name).generate(ids, visual, grid, max_new_tokens=6).tokens
    eos = int(free[0, 2])  # row 0 reaches it at step 2 at the latest
    ours = pipeline(name).generate(ids, visual, grid, max_new_tokens=6, eos_token_id=eos)
    ref_tokens, _ = generate(bb, inputs, PruningPlan.halfv(shipped_profile(name)), 6, eos_token_id=eos)
    np.testing.assert_array_equal(ours.tokens, ref_tokens.numpy())
    first = int(np.argmax(ours.tokens[0] == eos))
    assert (ours.tokens[0, first:] == eos).all()


def test_bad_requests_are_user_errors():
    name = "tiny-qwen2.5-vl"
    bb = tiny_backbone(name)
    ids, visual, grid, _ = request(bb, name, 0, batch=1)
    pipe = pipeline(name)
    with pytest.raises(UserError, match="visual_embeds must be"):
        pipe.generate(ids, visual[:, :-1], grid)
    with pytest.raises(UserError, match="visual_embeds must be"):
        pipe.generate(ids, None, grid)
    with pytest.raises(UserError, match="no image_grid_thw"):
        pipe.generate(ids, visual, None)
    with pytest.raises(UserError, match="max_new_tokens"):
        pipe.generate(ids, visual, grid, max_new_tokens=0)
    two = np.concatenate([ids, ids], axis=0)
    two[1, :2] = bb.image_token_id  # second row: image tokens at another place
    with pytest.raises(UserError):
        pipe.generate(two, np.concatenate([visual, visual]), np.concatenate([grid, grid]))


@pytest.mark.slow
def test_modified_graph_is_refused_by_sha256(tmp_path):
    folder = copy_graphs("tiny-llava", tmp_path)
    data = bytearray((folder / "decode.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "decode.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        OrtPipeline(folder)


RUNTIME_ONLY = """
import json, sys
import numpy as np
from halfv_export.runtime.pipeline import OrtPipeline
from halfv_export.runtime import positions, text
pipe = OrtPipeline(sys.argv[1], threads=1)
n, hidden = 16, pipe.config["hidden_size"]
ids = np.array([[11, 12, 13] + [pipe.config["image_token_id"]] * n + [14, 15]])
out = pipe.generate(ids, np.random.default_rng(0).standard_normal((1, n, hidden)).astype(np.float32),
                    max_new_tokens=3)
banned = ("torch", "transformers", "halfv_export.method", "halfv_export.backbones", "halfv_export.graphs")
print(json.dumps({"tokens": out.tokens.tolist(),
                  "loaded": sorted(m for m in sys.modules if m.startswith(banned))}))
"""


@pytest.mark.slow
def test_runtime_imports_no_torch():
    """Load and run the pipeline in a fresh interpreter, then look at what it imported."""
    folder = exported_graphs("tiny-llava")
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["tokens"][0]) == 3
    assert result["loaded"] == []
