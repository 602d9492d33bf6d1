"""Token ids <-> text for the agent loops (the local engine's and verl's): one cached decode per
token id (tag detection reads the text a token adds) and plain encoding without special tokens."""

from __future__ import annotations

from typing import Any


class TokenText:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def piece(self, tok: int) -> str:
        """The text token `tok` adds (special tokens add none), cached."""
        p = self._pieces.get(tok)
        if p is None:
            p = self.tokenizer.decode([tok], skip_special_tokens=True)
            self._pieces[tok] = p
        return p

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
