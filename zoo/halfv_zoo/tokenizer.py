"""The zoo models' tokenizer: one id per word of the shapes task, saved as a real tokenizer.json.

A byte tokenizer spells "<|im_start|>" as 12 ids and "yellow" as 6, so the Qwen prompt had 78 text
tokens around 144 visual ones and the answer was a 5-step decode. With whole words the prompt is about
a dozen text tokens and the answer is one id + eos: the decoder's work is mostly visual tokens, as in
the real models this task stands in for. Built with the `tokenizers` library (WordLevel, lowercase,
split on whitespace and punctuation), so the runtime reads it like any checkpoint's tokenizer.json.

Ids 0-3 are pad / bos / eos / unk (the zoo configs' special ids), then the chat-template specials,
then the words. Image ids (1000-1003) come from the model config, never from text.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from halfv_export.core.families import FAMILIES
from halfv_export.runtime.text import HFTokenizer
from . import data

SPECIALS = ["[PAD]", "<s>", "</s>", "[UNK]"]  # ids 0..3 = pad / bos / eos / unk in the zoo configs
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def words() -> list[str]:
    """Every word and punctuation mark of the task's questions, answers and the two chat templates."""
    text = [t.format(kind=" ", colour=" ") for t in data.QUESTION_TEMPLATES.values()]
    text += list(data.COLOURS) + list(data.SHAPES) + data.answer_vocabulary() + list(data.DESCRIBE_PROMPTS.values())
    for before, after in (FAMILIES["qwen2_5_vl"].prompt, FAMILIES["llava"].prompt):
        text += [before, after.format(prompt=" ")]
    for special in CHAT_SPECIALS:
        text = [t.replace(special, " ") for t in text]
    return sorted({w.lower() for t in text for w in re.findall(r"\w+|[^\w\s]+", t)})


def build() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + CHAT_SPECIALS + words())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no space before punctuation
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS + CHAT_SPECIALS])
    return tok


def load() -> HFTokenizer:
    """The tokenizer as the runtime and the training use it (encode / decode)."""
    return HFTokenizer(tokenizer=build())


def save(folder: str | Path) -> Path:
    path = Path(folder) / "tokenizer.json"
    build().save(str(path))
    return path
