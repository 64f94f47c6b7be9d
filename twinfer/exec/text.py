"""Prompts as token ids: the scenario's random prompts, and text for interactive runs.

A scenario gives prompt lengths only; each request's prompt is drawn from a generator
seeded by (workload seed, request id), so every rank, every layout and the reference
see the same token ids.

For ``--prompt TEXT`` without ``--tokenizer``, text is tokenized byte-level: token id
= UTF-8 byte value (0..255). That needs a vocabulary of at least 256 ids and makes
sense only for models trained that way, but it lets any model - random weights
included - stream *something* with no tokenizer files. Generated ids of 256 and above
have no byte and print as U+FFFD. With ``--tokenizer DIR`` (a Hugging Face tokenizer
directory) ``transformers.AutoTokenizer`` is used instead.
"""

from __future__ import annotations

import codecs

import numpy as np

from twinfer.exec.scheduler import Sequence
from twinfer.spec import Request, SpecError


def random_prompt(seed: int, rid: int, length: int, vocab: int) -> list[int]:
    rng = np.random.default_rng([seed, rid])
    return rng.integers(0, vocab, size=length).tolist()


def sequences(requests: list[Request], vocab: int, seed: int) -> list[Sequence]:
    """Sequences with random prompts of the requests' lengths."""
    return [Sequence(r.rid, r.arrival_s, random_prompt(seed, r.rid, r.prompt_tokens, vocab),
                     r.output_tokens) for r in requests]


class ByteTokenizer:
    """UTF-8 bytes as token ids; streams through an incremental decoder."""

    def __init__(self, vocab: int) -> None:
        if vocab < 256:
            raise SpecError("prompt", f"byte-level tokenization needs a vocabulary of 256 "
                            f"ids, the model has {vocab}", "give --tokenizer DIR")
        self._stream = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return b"".join(bytes([i]) if i < 256 else "\ufffd".encode() for i in ids).decode(
            "utf-8", errors="replace")

    def stream(self, token: int) -> str:
        """Text completed by one more token (may be empty mid-character)."""
        data = bytes([token]) if token < 256 else "\ufffd".encode()
        return self._stream.decode(data)

    def finish(self) -> str:
        """What an unfinished trailing character decodes to at the end of the stream."""
        return self._stream.decode(b"", final=True)


class HFTokenizer:
    """A Hugging Face tokenizer; streams by decoding the growing output."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self._ids: list[int] = []
        self._text = ""

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def stream(self, token: int) -> str:
        self._ids.append(token)
        text = self.tok.decode(self._ids)
        new, self._text = text[len(self._text):], text
        return new

    def finish(self) -> str:
        return ""


def tokenizer_for(path: str | None, vocab: int) -> ByteTokenizer | HFTokenizer:
    return HFTokenizer(path) if path else ByteTokenizer(vocab)
