"""Reversible pre-tokenization of raw target text: split punctuation off words, mark the joins.

BPE works on space-separated tokens, so raw text must be split first, and translations must be
turned back into plain text. The scheme (like OpenNMT's "aggressive" mode with joiner marks):

* Whitespace runs (anything ``str.split()`` splits on: spaces, tabs, no-break spaces, ...) separate
  chunks. They are *normalized*: ``detokenize(tokenize(x)) == " ".join(x.split())``, i.e. runs become
  one space and leading/trailing whitespace is dropped. Everything else round-trips exactly.
* Inside a chunk, every maximal run of letters, combining marks and digits (Unicode L, M, N) is one
  token; every other character (punctuation, symbols, apostrophes, hyphens, ...) is a token of its
  own.
* Where two tokens of a chunk touched, the joiner ``￭`` (U+FFED) is put on the non-word side:
  before a punctuation token (``￭,``) or, when a word follows punctuation, after the punctuation
  (``(￭``). Word tokens never carry a joiner, so "don", "t", "2019" are the same tokens wherever
  they occur.
* A literal ``￭`` in the input becomes the token ``%FFED`` (never produced otherwise, because
  tokens mix no letters with punctuation), so the scheme is reversible for any text.

>>> tokenize("Hello, world! It's 3.5 km (e-mail: a@b.org).")
"Hello ￭, world ￭! It ￭'￭ s 3 ￭.￭ 5 km (￭ e ￭-￭ mail ￭: a ￭@￭ b ￭.￭ org ￭) ￭."
>>> detokenize(tokenize("Hello, world! It's 3.5 km (e-mail: a@b.org)."))
"Hello, world! It's 3.5 km (e-mail: a@b.org)."
>>> detokenize(tokenize("  two   spaces\\tand a tab "))
'two spaces and a tab'

``detokenize`` accepts any string, also model output that no tokenization produces: a joiner at the
start or end of the line is ignored, a token that is only ``￭`` joins its neighbours, joiners inside
a token are dropped.

>>> detokenize("￭ a ￭ b ￭￭ c￭")
'abc'

For corpora that are already tokenized (the Stanford IWSLT/WMT files) use ``mode="tokenized"``:
tokens are the whitespace-separated words as they are, and detokenizing just joins them.

>>> tokenize("It &apos;s  done .", mode="tokenized")
'It &apos;s done .'
"""
from __future__ import annotations

import regex

JOINER = "\uffed"  # ￭, OpenNMT's joiner mark
ESCAPED_JOINER = "%FFED"  # how a literal joiner in the input is written as a token
MODES = ("raw", "tokenized")

# a run of letters/marks/digits, or any other single character (the text has no whitespace here)
_PIECE = regex.compile(r"([\p{L}\p{M}\p{N}]+)|(.)", regex.DOTALL)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown pre-tokenization mode {mode!r}; expected one of {MODES}")


def tokenize(text: str, mode: str = "raw") -> str:
    """Space-separated tokens with joiner marks (``mode="raw"``), or the whitespace-split text."""
    _check_mode(mode)
    if mode == "tokenized":
        return " ".join(text.split())
    return " ".join(split_tokens(text))


def split_tokens(text: str) -> list[str]:
    """The tokens of :func:`tokenize` (raw mode) as a list."""
    tokens: list[str] = []
    for chunk in text.split():
        first = True
        for word, mark in _PIECE.findall(chunk):
            if word:
                if not first:  # a word always follows punctuation here: mark the punctuation
                    tokens[-1] += JOINER
                tokens.append(word)
            else:
                if mark == JOINER:
                    mark = ESCAPED_JOINER
                tokens.append(mark if first else JOINER + mark)
            first = False
    return tokens


def detokenize(text: str, mode: str = "raw") -> str:
    """Plain text from tokens: the inverse of :func:`tokenize` (never raises on odd input)."""
    _check_mode(mode)
    if mode == "tokenized":
        return " ".join(text.split())
    out: list[str] = []
    glue = True  # no space before the first token
    for token in text.split():
        core = token.replace(JOINER, "")
        if core == ESCAPED_JOINER:
            core = JOINER
        if not (glue or token[0] == JOINER):
            out.append(" ")
        out.append(core)
        glue = token[-1] == JOINER
    return "".join(out)
