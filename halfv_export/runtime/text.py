"""Text <-> ids on the host, torch-free.

Real checkpoints: the checkpoint's tokenizer.json through the `tokenizers` library.
Built-in tiny models have no tokenizer: each UTF-8 byte b of the prompt becomes id BYTE_OFFSET + b
(ids 10..265, clear of the tiny configs' special ids 0-2 and 1000-1003), and decoding maps back; ids
outside that range print as <id>. A checkpoint without tokenizer.json whose vocabulary cannot hold that
range clear of its special ids gets the bytes spread over the ids it has (`ByteTokenizer.within`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserError
from ..core.families import family

BYTE_OFFSET = 10


def prompt_ids(tokenizer, family_key: str, prompt: str, bos_token_id: int | None) -> tuple[list[int], list[int]]:
    """(ids before the image span, ids after it) in the family's chat format (core/families)."""
    spec = family(family_key)
    before, after = spec.prompt
    bos = [bos_token_id] if spec.bos and bos_token_id is not None else []
    return bos + tokenizer.encode(before), tokenizer.encode(after.format(prompt=prompt))


class ByteTokenizer:
    """The built-in tiny models' tokenizer: one id per UTF-8 byte.

    Byte b is ids[b % len(ids)]; by default ids = BYTE_OFFSET .. BYTE_OFFSET + 255, so b -> BYTE_OFFSET + b.
    """

    def __init__(self, ids=None):
        self.ids = [int(i) for i in ids] if ids is not None else list(range(BYTE_OFFSET, BYTE_OFFSET + 256))
        if not self.ids:
            raise ValueError("a byte tokenizer needs at least one id")
        self.byte_of = {}
        for b in range(256):  # decoding maps an id back to the first byte that uses it
            self.byte_of.setdefault(self.ids[b % len(self.ids)], b)

    @classmethod
    def within(cls, vocab_size: int, special_ids=()) -> "ByteTokenizer":
        """The byte tokenizer fitted to a vocabulary: the 256 bytes take the ids from BYTE_OFFSET up that are
        not special (from 0 when none is left above it), in order. A vocabulary of 10 + 256 ids or more with
        no special id among 10..265 keeps the default b -> 10 + b. With fewer free ids than bytes several bytes
        share an id: a checkpoint without a tokenizer has no meaning for its text ids anyway, what matters is
        that every id is an embedding row and no text reads as an image or special token."""
        special = {int(i) for i in special_ids if i is not None}
        free = [i for i in range(BYTE_OFFSET, vocab_size) if i not in special]
        free = free or [i for i in range(min(BYTE_OFFSET, vocab_size)) if i not in special]
        if not free:
            raise UserError(f"the vocabulary of {vocab_size} ids has no id for text besides the special ids "
                            f"{sorted(special)}: add a tokenizer.json to the checkpoint")
        return cls(free[:256])

    def encode(self, text: str) -> list[int]:
        return [self.ids[b % len(self.ids)] for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if i in self.byte_of:
                pending.append(self.byte_of[i])
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            out.append(f"<{i}>")
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


def special_token_ids(config) -> set[int]:
    """The ids a transformers VLM config reserves: image, video, vision start/end, bos, eos, pad (top level
    and text config). Synthetic or byte-tokenised text must avoid them: an image id in the text would be
    read as a visual token, a vision-start id as the start of an image."""
    ids = set()
    for cfg in (config, getattr(config, "text_config", None)):
        for key in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                    "vision_end_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(cfg, key, None) if cfg is not None else None
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, int) and v >= 0:
                    ids.add(v)
    return ids


class HFTokenizer:
    """A checkpoint's tokenizer.json (no transformers needed)."""

    def __init__(self, path: str | os.PathLike | None = None, tokenizer=None):
        """From a tokenizer.json path, or around a `tokenizers.Tokenizer` already built."""
        from tokenizers import Tokenizer

        if tokenizer is not None:
            self.tokenizer = tokenizer
            return
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise UserError(f"could not read tokenizer {path}: {exc}") from None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(folder: str | os.PathLike | None):
    """tokenizer.json in `folder` if there is one, else the byte tokenizer of the tiny models."""
    if folder is not None and (Path(folder) / "tokenizer.json").is_file():
        return HFTokenizer(Path(folder) / "tokenizer.json")
    return ByteTokenizer()
