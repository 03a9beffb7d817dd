"""Target-side vocabulary: a fairseq-style symbol table with four reserved entries.

The decoder predicts ids from this table. Ids 0-3 are fixed so that every module can rely
on them without passing a vocabulary around:

>>> v = Vocab.build([["hal@@", "lo", "welt"], ["hal@@", "lo"]])
>>> v.encode(["hal@@", "lo", "zzz"])
[4, 5, 3]
>>> v.decode([4, 5, Vocab.EOS])
['hal@@', 'lo']
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from nmt.errors import VocabError


class Vocab:
    PAD, BOS, EOS, UNK = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

    def __init__(self, symbols: Sequence[str]):
        if tuple(symbols[:4]) != self.SPECIALS:
            raise VocabError(f"a target vocabulary must start with {self.SPECIALS}, got {tuple(symbols[:4])}")
        if len(set(symbols)) != len(symbols):
            dup = next(s for s, n in Counter(symbols).items() if n > 1)
            raise VocabError(f"duplicate symbol {dup!r} in target vocabulary")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, tokenized_lines: Iterable[Sequence[str]], min_count: int = 1) -> "Vocab":
        """Symbols by descending count, ties broken alphabetically (deterministic)."""
        counts = Counter(tok for line in tokenized_lines for tok in line)
        kept = sorted((s for s, c in counts.items() if c >= min_count and s not in cls.SPECIALS),
                      key=lambda s: (-counts[s], s))
        return cls(list(cls.SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.symbols == other.symbols

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = self.UNK
        return [self.index.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols up to the first EOS; PAD and BOS are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.EOS:
                break
            if i in (self.PAD, self.BOS):
                continue
            out.append(self.symbols[i])
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(s + "\n" for s in self.symbols), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        if not path.is_file():
            raise VocabError(f"{path}: target vocabulary file not found")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for n, line in enumerate(lines, 1):
            if not line or line != line.strip():
                raise VocabError(f"{path}:{n}: empty symbol or surrounding whitespace in vocabulary line")
        try:
            return cls(lines)
        except VocabError as e:
            raise VocabError(f"{path}: {e}") from None
