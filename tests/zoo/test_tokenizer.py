"""The zoo tokenizer covers every word of the task, round-trips answers, and is what the weights ship."""

from __future__ import annotations

import pytest

from halfv_export.runtime.text import load_tokenizer, prompt_ids
from halfv_zoo import data, tokenizer
from halfv_zoo.models import weights_dir

pytestmark = pytest.mark.zoo


def test_every_question_and_answer_is_in_the_vocabulary():
    words = tokenizer.load()
    unk = words.tokenizer.token_to_id("[UNK]")
    for s in data.samples("train", 500) + data.samples("test", 200):
        ids = words.encode(s.question.prompt)
        assert unk not in ids, s.question.prompt
        answer = words.encode(s.question.answer)
        assert len(answer) == 1 and words.decode(answer) == s.question.answer


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_chat_template_is_a_few_tokens(family):
    before, after = prompt_ids(tokenizer.load(), family, "What colour is the circle?", bos_token_id=1)
    assert 2 <= len(before) <= 3 and 7 <= len(after) <= 10  # words, not bytes
    unk = tokenizer.build().token_to_id("[UNK]")
    assert unk not in before + after


@pytest.mark.parametrize("name", ["shapes-qwen2.5-vl", "shapes-llava"])
def test_committed_tokenizer_is_the_built_one(name):
    shipped = load_tokenizer(weights_dir(name))
    assert shipped.tokenizer.to_str() == tokenizer.build().to_str()
