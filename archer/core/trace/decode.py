"""Token ids -> text for traces: per-token text that never breaks a character, and whole texts.

Used by the viewer and by `archer trace export` (so it lives in core, not in the viewer).

Decoding tokens one at a time turns multi-byte characters (emoji, CJK) split over byte tokens
into U+FFFD. Instead each token is decoded in a short window of the tokens before it, and the
characters the window gains when the token is added are attributed to that token; a token that
completes no character yet gets "" (the heatmap shows an empty-cell marker). The window decodes
go to the tokenizer as two `batch_decode` calls, so a response costs two calls, not n.

transformers is imported only inside `load_decoder` (the viewer runs it in a worker, so the app
starts at once). Without a tokenizer (none found, load failure, `--no-decode`) `IdDecoder` shows
token ids and says why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WINDOW = 4  # tokens of left context: a UTF-8 character spans at most 4 byte tokens
BLOCK = 16  # tokens that share one window start (see HFDecoder._texts)
REPLACEMENT = "\ufffd"


class Decoder:
    """Base: turns ids into per-token text and whole-sequence text."""

    is_text = True
    label = ""  # shown in the status bar
    note: str | None = None  # why there is no text decoding, if there is none

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_in_context(self, context: Sequence[int]) -> str:
        """The text of the last id of `context`, decoded after the ids before it."""
        if not len(context):
            return ""
        return self.token_texts(list(context))[-1]


class IdDecoder(Decoder):
    """No tokenizer: every token shows its id."""

    is_text = False

    def __init__(self, note: str | None = None):
        self.note = note
        self.label = "token ids" + (f" ({note})" if note else "")

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [str(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)


class HFDecoder(Decoder):
    """A transformers tokenizer, decoded run-wise (see the module docstring)."""

    def __init__(self, tokenizer: Any, path: str):
        self.tok = tokenizer
        self.path = path
        self.label = f"tokenizer {path}"
        self._size = len(tokenizer)
        # A fast tokenizer's Rust backend decodes a batch without transformers' per-sequence
        # Python work (the same text: no clean-up of spaces, special tokens kept).
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def _batch(self, seqs: list[list[int]]) -> list[str]:
        if self._backend is not None:
            return list(self._backend.decode_batch(seqs, skip_special_tokens=False))
        return list(
            self.tok.batch_decode(seqs, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def _valid(self, i: int) -> bool:
        return 0 <= i < self._size

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if all(map(self._valid, ids)):
            return self._batch([ids])[0]
        return "".join(self.token_texts(ids))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Per-token text; an id outside the vocabulary shows as ⟨id⟩ and splits the decoding."""
        ids = [int(i) for i in ids]
        if all(map(self._valid, ids)):
            return self._texts(ids)
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if self._valid(i):
                run.append(i)
                continue
            out += self._texts(run)
            out.append(f"⟨{i}⟩")
            run = []
        return out + self._texts(run)

    def _texts(self, ids: list[int]) -> list[str]:
        # Tokens go in blocks of BLOCK sharing one window start a (WINDOW tokens before the block),
        # so decode(ids[a:i]) for token i is the previous token's decode(ids[a:i+1]): one decode
        # per token plus one per block, each only a few tokens long.
        n = len(ids)
        if n == 0:
            return []
        seqs: list[list[int]] = []
        for b in range(0, n, BLOCK):
            a = max(0, b - WINDOW)
            seqs.append(ids[a:b])
            seqs.extend(ids[a : i + 1] for i in range(b, min(b + BLOCK, n)))
        dec = self._batch(seqs)
        out = []
        k = 0
        for b in range(0, n, BLOCK):
            prev = dec[k]
            k += 1
            for i in range(b, min(b + BLOCK, n)):
                cur = dec[k]
                k += 1
                out.append(_new_text(prev, cur, last=i == n - 1))
                prev = cur
        return out


def _new_text(before: str, after: str, last: bool) -> str:
    """What decoding one more token added. A trailing U+FFFD is a character whose bytes are not
    all there yet: it is not shown until a later token completes it (except at the very end)."""
    a = before.rstrip(REPLACEMENT)
    b = after if last else after.rstrip(REPLACEMENT)
    if b.startswith(a):
        return b[len(a) :]
    k = 0  # a normaliser rewrote the earlier text: keep only what is new
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return b[k:]


def load_decoder(path: str | os.PathLike | None, no_decode: bool = False, note: str | None = None) -> Decoder:
    """A decoder for the tokenizer folder `path`; never raises (falls back to ids with a note)."""
    if no_decode:
        return IdDecoder("--no-decode")
    if path is None:
        return IdDecoder(note or "no tokenizer: pass --tokenizer DIR")
    p = Path(path).expanduser()
    if not p.is_dir():
        return IdDecoder(f"tokenizer folder {p} not found")
    try:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure means "show ids", never a crash
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return IdDecoder(f"tokenizer at {p} failed to load: {msg[:120]}")
    return HFDecoder(tok, str(p))


def resolve_tokenizer(
    explicit: str | os.PathLike | None, summary: dict[str, Any], trace_dir: Path
) -> tuple[Path | None, str | None]:
    """(tokenizer folder to try, note): --tokenizer, else summary.json's `tokenizer_path`, else
    `<run>/tokenizer` next to the trace. The note says why none was found."""
    if explicit is not None:
        return Path(explicit).expanduser(), None
    recorded = summary.get("tokenizer_path")
    candidates = []
    if recorded:
        candidates.append(Path(str(recorded)).expanduser())
    candidates.append(trace_dir.parent / "tokenizer")
    if summary.get("run_dir"):
        candidates.append(Path(str(summary["run_dir"])).expanduser() / "tokenizer")
    for c in candidates:
        if c.is_dir():
            return c, None
    if recorded:
        return None, f"recorded tokenizer_path {recorded} not found; pass --tokenizer DIR"
    return None, "no tokenizer recorded; pass --tokenizer DIR"
