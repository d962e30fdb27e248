"""Text <-> ids on the host, torch-free.

Real checkpoints: the checkpoint's tokenizer.json through the `tokenizers` library.
Built-in tiny models have no tokenizer: each UTF-8 byte b of the prompt becomes id BYTE_OFFSET + b
(ids 10..265, clear of the tiny configs' special ids 0-2 and 1000-1003), and decoding maps back; ids
outside that range print as <id>.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

BYTE_OFFSET = 10

# Chat text around the image span per family: (before, after); "{prompt}" is replaced by the user text.
#   Qwen2.5-VL:  <|im_start|>user\n <vision_start> <image>*N <vision_end> PROMPT<|im_end|>\n<|im_start|>assistant\n
#   LLaVA-1.5:   <bos> USER: <image>*N \nPROMPT ASSISTANT:
#   LLaVA-NeXT:  <bos> [INST] <image>*N \nPROMPT [/INST]
PROMPT_TEMPLATES = {
    "qwen2_5_vl": ("<|im_start|>user\n", "{prompt}<|im_end|>\n<|im_start|>assistant\n"),
    "llava": ("USER: ", "\n{prompt} ASSISTANT:"),
    "llava_next": ("[INST] ", "\n{prompt} [/INST]"),
}
BOS_FAMILIES = ("llava", "llava_next")  # Qwen's chat format starts without a BOS token


def prompt_ids(tokenizer, family: str, prompt: str, bos_token_id: int | None) -> tuple[list[int], list[int]]:
    """(ids before the image span, ids after it) in the family's chat format."""
    before, after = PROMPT_TEMPLATES[family]
    bos = [bos_token_id] if family in BOS_FAMILIES and bos_token_id is not None else []
    return bos + tokenizer.encode(before), tokenizer.encode(after.format(prompt=prompt))


class ByteTokenizer:
    """The built-in tiny models' tokenizer: one id per UTF-8 byte."""

    def encode(self, text: str) -> list[int]:
        return [BYTE_OFFSET + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if BYTE_OFFSET <= i < BYTE_OFFSET + 256:
                pending.append(i - BYTE_OFFSET)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            out.append(f"<{i}>")
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


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
