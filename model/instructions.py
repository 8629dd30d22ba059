"""Refuse a tokenizer length that makes two different instructions look the same to the model.

The tiny backbone keeps the first ``max_text_len`` UTF-8 bytes of an instruction. At 32 bytes the
synthetic world's "put the red block in the bottom right" and "... bottom left" became one input:
the policy was asked to do two things from identical prompts, and nothing said so.
:class:`InstructionIdCheck` remembers every instruction it has seen by its kept bytes and raises on
the first batch that holds a second instruction with the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable


class InstructionCollisionError(ValueError):
    """Two different instructions tokenize to the same ids."""


def kept_bytes(text: str, max_len: int) -> bytes:
    """What the byte tokenizer keeps of ``text``."""
    return text.encode("utf-8")[:max_len]


def check_distinct(instructions: Iterable[str], max_len: int) -> None:
    """Raise :class:`InstructionCollisionError` when two of ``instructions`` keep the same bytes."""
    InstructionIdCheck(max_len).check(instructions)


class InstructionIdCheck:
    """Remembers instructions by their kept bytes; :meth:`check` raises on a collision.

    Cheap per batch: only instructions not seen before are tokenized."""

    def __init__(self, max_len: int) -> None:
        self.max_len = int(max_len)
        self._seen: set[str] = set()
        self._by_ids: dict[bytes, str] = {}

    def check(self, instructions: Iterable[str]) -> None:
        for text in instructions:
            text = str(text)
            if text in self._seen:
                continue
            ids = kept_bytes(text, self.max_len)
            other = self._by_ids.get(ids)
            if other is not None and other != text:
                a, b = text.encode("utf-8"), other.encode("utf-8")
                need = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) + 1
                raise InstructionCollisionError(
                    f"instructions {other!r} and {text!r} are the same {self.max_len} bytes to the model "
                    f"(model.backbone.max_text_len={self.max_len}); raise it to at least {need}")
            self._by_ids[ids] = text
            self._seen.add(text)
