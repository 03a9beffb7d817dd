"""From a line of text to model ids and back: the source and target pipelines.

Source (:class:`SourcePipeline`), two kinds:

- ``"wordpiece"`` (the paper's system): BERT's WordPiece over the BERT vocabulary, ids wrapped in
  ``[CLS] ... [SEP]``, lower-cased when the BERT model is uncased. HTML entities are UNESCAPED
  first (``&quot;`` -> ``"``, ``&apos;`` -> ``'``, ``&amp;`` -> ``&``): the Stanford IWSLT/WMT files
  carry them but BERT never saw them in pre-training, and the escaped form would be split into
  meaningless pieces (``&``, ``apo``, ``##s``, ``;``).
- ``"bpe"`` (the Transformer baselines): optional pre-tokenization (raw mode), BPE learned on the
  training source, a source :class:`Vocab`, and EOS appended as fairseq does. Text kept as is.

Target (:class:`TargetPipeline`), two modes:

- ``"tokenized"`` for the Stanford pre-tokenized corpora: whitespace split -> BPE -> Vocab. The text
  is kept EXACTLY as is, entities included, so decoded output matches the Stanford references
  token for token (that is what the paper's BLEU is computed against).
- ``"raw"`` for untokenized text: ``nmt.text.pretokenize.tokenize`` -> BPE -> Vocab; decoding runs
  ``detokenize`` so the output is plain text again.

``decode`` reverses ``encode``: Vocab.decode -> remove_bpe -> detokenize (raw) or join (tokenized).
Both pipelines serialize to a plain JSON-able dict (``to_dict``/``from_dict``: vocabulary, BPE merges,
mode, lower-casing, max positions), stored in data directories and checkpoints, so a checkpoint
alone rebuilds them. Every line has a leading UTF-8 BOM removed. A worked example:

>>> from nmt.text.bpe import BPE
>>> target = TargetPipeline.build("tokenized", BPE([("l", "o"), ("lo", "w</w>")]),
...                               [["low", "lower"], ["low"]])
>>> target.tokens("\\ufefflow lower")
['low', 'lo@@', 'w@@', 'e@@', 'r']
>>> ids = target.encode("low lower")
>>> target.decode(ids)
'low lower'
>>> TargetPipeline.from_dict(target.to_dict()).encode("low lower") == ids
True
"""
from __future__ import annotations

import html
from typing import Iterable, Sequence

from nmt.errors import DataError
from nmt.text.bpe import BPE, remove_bpe
from nmt.text.lines import strip_bom
from nmt.text.vocab import Vocab
from nmt.text.wordpiece import WordPieceTokenizer

SOURCE_FORMAT = "nmt-source/1"
TARGET_FORMAT = "nmt-target/1"
MODES = ("tokenized", "raw")


def pre_bpe_tokens(line: str, mode: str) -> list[str]:
    """Whitespace tokens that BPE segments: the line as is (tokenized) or after pretokenize (raw)."""
    line = strip_bom(line)
    if mode == "raw":
        from nmt.text.pretokenize import (
            tokenize,  # only raw mode needs the punctuation splitter
        )
        line = tokenize(line)
    return line.split()


def _check(d: dict, fmt: str, keys: Sequence[str], what: str) -> None:
    if not isinstance(d, dict) or d.get("format") != fmt:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{what}: format {found!r}, expected {fmt!r} (not written by this version of nmt?)")
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{what}: missing keys {missing}")


class SourcePipeline:
    """Source line -> ids. Build with :meth:`wordpiece` or :meth:`bpe`, or :meth:`from_dict`."""

    def __init__(self, kind: str, *, tokenizer: WordPieceTokenizer | None = None, bpe: BPE | None = None,
                 vocab: Vocab | None = None, mode: str = "tokenized", max_positions: int = 512):
        if kind not in ("wordpiece", "bpe"):
            raise DataError(f"unknown source pipeline kind {kind!r} (expected 'wordpiece' or 'bpe')")
        if mode not in MODES:
            raise DataError(f"unknown text mode {mode!r} (expected one of {MODES})")
        if (kind == "wordpiece") != (tokenizer is not None) or (kind == "bpe") != (bpe is not None and vocab is not None):
            raise DataError("a 'wordpiece' source needs a tokenizer; a 'bpe' source needs bpe and vocab")
        self.kind, self.tokenizer, self.bpe, self.vocab = kind, tokenizer, bpe, vocab
        self.mode, self.max_positions = mode, max_positions

    @classmethod
    def wordpiece(cls, tokenizer: WordPieceTokenizer, max_positions: int = 512) -> "SourcePipeline":
        """BERT source; max_positions is BERT's max_position_embeddings (longest id sequence)."""
        return cls("wordpiece", tokenizer=tokenizer, max_positions=max_positions)

    @classmethod
    def with_bpe(cls, bpe: BPE, vocab: Vocab, mode: str = "tokenized", max_positions: int = 1024) -> "SourcePipeline":
        return cls("bpe", bpe=bpe, vocab=vocab, mode=mode, max_positions=max_positions)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.kind == "wordpiece" else Vocab.PAD

    @property
    def vocab_tokens(self) -> list[str]:
        return list(self.tokenizer.vocab_tokens) if self.kind == "wordpiece" else list(self.vocab.symbols)

    @property
    def do_lower_case(self) -> bool:
        return bool(getattr(self.tokenizer, "do_lower_case", False)) if self.kind == "wordpiece" else False

    def clean(self, line: str) -> str:
        """The text the tokenizer sees: BOM removed; for BERT also HTML entities unescaped."""
        line = strip_bom(line)
        return html.unescape(line) if self.kind == "wordpiece" else line

    def tokens(self, line: str) -> list[str]:
        """Subword tokens without special tokens (word pieces or BPE symbols)."""
        if self.kind == "wordpiece":
            return self.tokenizer.tokenize(self.clean(line))
        return self.bpe.segment_tokens(pre_bpe_tokens(line, self.mode))

    def encode(self, line: str, max_length: int | None = None) -> list[int]:
        """Ids with specials: [CLS] ... [SEP] (wordpiece) or ... EOS (bpe); truncated to max_length."""
        if self.kind == "wordpiece":
            return self.tokenizer.encode(self.clean(line), max_length=max_length)
        ids = self.vocab.encode(self.tokens(line))
        if max_length is not None:
            ids = ids[: max_length - 1]
        return ids + [Vocab.EOS]

    def to_dict(self) -> dict:
        d = {"format": SOURCE_FORMAT, "kind": self.kind, "max_positions": self.max_positions,
             "vocab": self.vocab_tokens}
        if self.kind == "wordpiece":
            d.update(do_lower_case=self.do_lower_case, unescape_html=True)
        else:
            d.update(mode=self.mode, merges=[list(m) for m in self.bpe.merges], separator=self.bpe.separator)
        return d

    @classmethod
    def from_dict(cls, d: dict, what: str = "source pipeline") -> "SourcePipeline":
        _check(d, SOURCE_FORMAT, ("kind", "vocab", "max_positions"), what)
        if d["kind"] == "wordpiece":
            tok = WordPieceTokenizer(list(d["vocab"]), do_lower_case=bool(d.get("do_lower_case", True)), source=what)
            return cls.wordpiece(tok, max_positions=int(d["max_positions"]))
        _check(d, SOURCE_FORMAT, ("mode", "merges", "separator"), what)
        bpe = BPE([tuple(m) for m in d["merges"]], separator=d["separator"])
        return cls.with_bpe(bpe, Vocab(d["vocab"]), mode=d["mode"], max_positions=int(d["max_positions"]))


class TargetPipeline:
    """Target line <-> ids (without BOS/EOS) through (pretokenize) + BPE + Vocab."""

    def __init__(self, mode: str, bpe: BPE, vocab: Vocab):
        if mode not in MODES:
            raise DataError(f"unknown text mode {mode!r} (expected one of {MODES})")
        self.mode, self.bpe, self.vocab = mode, bpe, vocab

    @classmethod
    def build(cls, mode: str, bpe: BPE, training_lines: Iterable[Sequence[str]] | Iterable[str]) -> "TargetPipeline":
        """Vocabulary = every BPE symbol of the training target (Vocab.build order).

        ``training_lines``: raw lines (str) or already pre-tokenized token lists.
        """
        def symbols():
            for line in training_lines:
                toks = pre_bpe_tokens(line, mode) if isinstance(line, str) else list(line)
                yield bpe.segment_tokens(toks)
        return cls(mode, bpe, Vocab.build(symbols()))

    def tokens(self, line: str) -> list[str]:
        """BPE symbols of a line (what the ids stand for)."""
        return self.bpe.segment_tokens(pre_bpe_tokens(line, self.mode))

    def encode(self, line: str) -> list[int]:
        return self.vocab.encode(self.tokens(line))

    def decode_tokens(self, symbols: Sequence[str]) -> str:
        text = remove_bpe(" ".join(symbols), self.bpe.separator)
        if self.mode == "raw":
            from nmt.text.pretokenize import detokenize
            text = detokenize(text)
        return text

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, up to the first EOS; PAD/BOS dropped; BPE removed; detokenized in raw mode."""
        return self.decode_tokens(self.vocab.decode(ids))

    def to_dict(self) -> dict:
        return {"format": TARGET_FORMAT, "mode": self.mode, "merges": [list(m) for m in self.bpe.merges],
                "separator": self.bpe.separator, "vocab": list(self.vocab.symbols)}

    @classmethod
    def from_dict(cls, d: dict, what: str = "target pipeline") -> "TargetPipeline":
        _check(d, TARGET_FORMAT, ("mode", "merges", "separator", "vocab"), what)
        return cls(d["mode"], BPE([tuple(m) for m in d["merges"]], separator=d["separator"]), Vocab(d["vocab"]))
