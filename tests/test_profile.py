"""Profile: counts in integer arithmetic, shipped paper values, validation and backbone mismatch."""

from __future__ import annotations

import json

import pytest

from halfv_export.core.errors import UserError
from halfv_export.core.profile import Profile, keep_count, shipped_profile


@pytest.mark.parametrize("n,ratio,expected", [(16, 0.25, 4), (7, 0.25, 1), (3, 0.25, 1), (1, 0.05, 1),
                                              (1000, 0.05, 50), (4096, 0.25, 1024), (9, 0.5, 4), (5, 1.0, 5)])
def test_keep_count_is_max_one_floor(n, ratio, expected):
    assert keep_count(n, ratio) == expected == max(1, int(n * ratio))


@pytest.mark.parametrize("name,ivr,ssr,mode,keep,anchor", [
    ("qwen2.5-vl-7b", 2, 21, "topk", 0.25, 0.2),
    ("llava-1.5-7b", 3, 15, "freeze", 0.5, 0.2),
    ("llava-next-7b", 2, 16, "freeze", 0.5, 0.1),
])
def test_shipped_profiles_carry_paper_values(name, ivr, ssr, mode, keep, anchor):
    prof = shipped_profile(name)
    assert (prof.ivr_layer, prof.ssr_layer, prof.ssr_mode, prof.ivr_keep, prof.anchor_share) == \
        (ivr, ssr, mode, keep, anchor)
    assert prof.source == "paper"


def test_qwen_ssr_keep_is_five_percent_of_original():
    prof = shipped_profile("qwen2.5-vl-7b")
    assert prof.ssr_count(1000) == 50 and prof.ivr_count(1000) == 250 and prof.anchor_count(1000) == 50


def test_profile_for_another_backbone_is_refused():
    prof = shipped_profile("qwen2.5-vl-7b")
    with pytest.raises(UserError, match="not for"):
        prof.check_backbone("llava", 32, "llava-1.5-7b")


def test_round_trip_and_bad_files(tmp_path):
    prof = shipped_profile("tiny-llava")
    path = tmp_path / "p.json"
    prof.save(path)
    assert Profile.load(path) == prof
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Profile.load(tmp_path / "bad.json")
    data = prof.to_dict() | {"schema_version": 99}
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version"):
        Profile.load(tmp_path / "v.json")
    with pytest.raises(UserError, match="ssr_layer"):
        Profile(**(prof.to_dict() | {"ssr_layer": 1}))
