"""Byte-pair encoding (Sennrich et al., 2016) for the target side, output-identical to subword-nmt 0.3.8.

Learning starts from characters, with the word-final character marked by ``</w>`` (codes format
``#version: 0.2``), and repeatedly merges the most frequent adjacent symbol pair. Ties go to the
lexicographically largest pair, as in subword-nmt (``max`` over ``(frequency, pair)``). Learning
stops after ``num_merges`` merges or when no pair occurs ``min_frequency`` times.

Applying the codes merges, inside each word, the adjacent pair with the lowest rank (earliest merge)
until none is left; every non-final piece gets the continuation marker ``@@`` and ``remove_bpe``
deletes the markers again. Words are separated by single spaces (U+0020), as in subword-nmt: other
whitespace (tabs, no-break spaces) is part of a word. ``nmt.text.pretokenize`` never emits such words.

Worked example:

>>> lines = ["low low low low low", "lower lower", "newest newest newest", "widest widest"]
>>> merges = learn_bpe(lines, num_merges=5)
>>> merges  # ("l","o") occurs 7 times; then four pairs tie at 5 and the largest pair wins
[('l', 'o'), ('w', 'e'), ('s', 't</w>'), ('lo', 'w</w>'), ('we', 'st</w>')]
>>> bpe = BPE(merges)
>>> bpe.segment("lowest slow newer")
'lo@@ west s@@ low n@@ e@@ we@@ r'
>>> remove_bpe(bpe.segment("lowest slow newer"))
'lowest slow newer'

Exact parity with subword-nmt, which ``tests/test_bpe.py`` checks on real text, means copying
two of its less obvious behaviours, both of which can change which pair wins:

* Its speed-up prunes rare pairs from the candidate set (kept aside in ``big_stats``) and
  recounts from ``big_stats`` when the best remaining pair falls below a threshold. A pruned pair
  that gains occurrences later (a merge re-creating a symbol string that a different merge
  already made, e.g. ``ab+c`` then ``a+bc``) is tracked as a delta, and a positive delta
  overwrites its stored total. :class:`_PairStatistics` copies that bookkeeping step by step.
* It merges words with a regular expression over the space-joined symbols. For words that contain
  other whitespace characters that match can cross symbol boundaries, so those (rare) words go
  through the same regular expression here; all other words use a plain list merge, which gives
  the same result.

:func:`plain_learn_bpe` is the plain twin of the learner: the algorithm in about 20 lines
(recount every pair, merge the most frequent, repeat), tested equal to :func:`learn_bpe` on real text.

Where the speed comes from: the best pair is the top of a heap with lazy invalidation (subword-nmt
scans every candidate pair for each merge), words are merged without regular expressions, and
``BPE`` caches the segmentation of every word it has seen as a ready-made string.
"""
from __future__ import annotations

import heapq
import re
from collections import Counter
from itertools import repeat
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from nmt.errors import BPEError
from nmt.files import atomic_write

END_OF_WORD = "</w>"
CODES_HEADER = "#version: 0.2"
_PRUNE_EVERY = 100  # subword-nmt prunes the candidate set every 100 merges; part of its output


# ----------------------------------------------------------------------------------------------
# Reading text


def read_text_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Yield the lines (newline included) of a binary stream as UTF-8 text.

    Raises BPEError naming ``name`` and the 1-based line number at the first undecodable line.
    Lines end at ``\\n`` only (``\\r`` stays part of the line, as in subword-nmt's file reading).
    """
    for lineno, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BPEError(f"{name}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                           "convert the file to UTF-8 (e.g. iconv -t UTF-8)") from None


def count_words(lines: Iterable[str]) -> Counter:
    """Word frequencies of space-separated text, split exactly like subword-nmt (on U+0020 only)."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(line.strip("\r\n ").split(" "))
    counts.pop("", None)
    return counts


# ----------------------------------------------------------------------------------------------
# Learning


def plain_learn_bpe(lines: Iterable[str], num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """The plain twin of :func:`learn_bpe`: recount every pair, merge the best, repeat.

    Slow (a full recount per merge) but short, to read next to the paper. On real text it returns
    the same merges as :func:`learn_bpe` (tests/test_bpe.py); they can differ only where the fast
    learner copies subword-nmt on purpose (module docstring): words holding whitespace other than
    U+0020, and pruned pairs whose counts subword-nmt's bookkeeping gets wrong.

    >>> plain_learn_bpe(["low low low low low", "lower lower", "newest newest newest", "widest widest"], 5)
    [('l', 'o'), ('w', 'e'), ('s', 't</w>'), ('lo', 'w</w>'), ('we', 'st</w>')]
    """
    # each word as symbols: its characters, the last one marked as word-final
    words = [(list(word[:-1]) + [word[-1] + END_OF_WORD], freq)
             for word, freq in count_words(lines).items()]
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, freq in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # most frequent; ties: largest pair
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        for symbols, _ in words:  # merge every occurrence, left to right
            k = 0
            while k < len(symbols) - 1:
                if (symbols[k], symbols[k + 1]) == best:
                    symbols[k:k + 2] = [best[0] + best[1]]
                k += 1
    return merges


def _reverse_key(symbol: str) -> bytes:
    """Bytes that sort in the *reverse* order of the strings (a terminator handles prefixes).

    The heap pops its smallest entry; ordering ties by this key pops the largest pair, which is
    subword-nmt's tie-break. key(a + b) == key(a)[:-4] + key(b) (the terminator is 4 bytes), so merged symbols are cheap.
    """
    return b"".join((0x10FFFF - ord(c)).to_bytes(3, "big") for c in symbol) + b"\xff\xff\xff\xff"


class _ReverseKeys(dict):
    """symbol -> _reverse_key(symbol), computed on first use."""

    def __missing__(self, symbol: str) -> bytes:
        key = self[symbol] = _reverse_key(symbol)
        return key


class _PairStatistics:
    """Pair frequencies with subword-nmt's pruning, plus a heap for the best pair.

    ``active`` is subword-nmt's ``stats`` (candidates for the next merge; pruned pairs that changed
    since hold deltas), ``stored`` its ``big_stats``. ``heap`` holds ``(-count, reverse key, pair)``
    and an entry is valid only while ``active[pair] == count``.
    """

    def __init__(self, counts: dict, keys: dict):
        self.active = dict(counts)
        self.stored = dict(counts)
        self.keys = keys  # symbol -> _reverse_key(symbol)
        self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        keys = self.keys
        self.heap = [(-c, keys[a] + keys[b], (a, b)) for (a, b), c in self.active.items()]
        heapq.heapify(self.heap)

    def push(self, pair: tuple, count: int) -> None:
        heapq.heappush(self.heap, (-count, self.keys[pair[0]] + self.keys[pair[1]], pair))

    def best(self) -> tuple:
        """The pair subword-nmt's ``max(stats, key=lambda x: (stats[x], x))`` returns."""
        heap, active = self.heap, self.active
        while True:
            neg, _, pair = heap[0]
            if active.get(pair) == -neg:
                return pair
            heapq.heappop(heap)

    def prune(self, threshold: float) -> None:
        """Move pairs below ``threshold`` out of the candidates (subword-nmt's ``prune_stats``)."""
        active, stored = self.active, self.stored
        for pair, count in list(active.items()):
            if count < threshold:
                del active[pair]
                if count < 0:  # a delta for a pair that was pruned before
                    stored[pair] = stored.get(pair, 0) + count
                else:
                    stored[pair] = count
        if len(self.heap) > 4 * len(active) + 1024:
            self._rebuild_heap()

    def recount(self) -> None:
        """All pairs become candidates again, with their stored counts."""
        self.active = dict(self.stored)
        self._rebuild_heap()


def learn_bpe(lines: Iterable[str], num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` merges from space-separated text (see the module docstring)."""
    return learn_bpe_from_counts(count_words(lines), num_merges, min_frequency)


def learn_bpe_from_counts(word_counts: dict, num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn merges from ``{word: frequency}``; same result as :func:`learn_bpe` on the text."""
    if num_merges < 0:
        raise BPEError(f"number of merges must be >= 0, got {num_merges}")
    if min_frequency < 1:
        raise BPEError(f"min_frequency must be >= 1, got {min_frequency}")
    for word in word_counts:
        if not word or " " in word:
            raise BPEError(f"invalid word {word!r}: words must be non-empty and contain no space")

    words: list[list[str]] = []
    freqs: list[int] = []
    for word, freq in word_counts.items():
        words.append(list(word[:-1]) + [word[-1] + END_OF_WORD])
        freqs.append(int(freq))
    # Words with whitespace other than U+0020 take subword-nmt's regex path (see module docstring).
    odd_whitespace = {j for j, (word, _) in enumerate(word_counts.items()) if re.search(r"\s", word)}

    counts: dict = {}
    where: dict = {}  # pair -> {word index: occurrences}, subword-nmt's ``indices``
    for j, symbols in enumerate(words):
        freq = freqs[j]
        for pair in zip(symbols, symbols[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            in_words = where.get(pair)
            if in_words is None:
                where[pair] = {j: 1}
            else:
                in_words[j] = in_words.get(j, 0) + 1
    if not counts:
        return []

    keys = _ReverseKeys()
    stats = _PairStatistics(counts, keys)
    threshold = max(counts.values()) / 10
    merges: list[tuple[str, str]] = []
    for i in range(num_merges):
        if stats.active:
            best = stats.best()
        if not stats.active or (i and stats.active[best] < threshold):
            # the best pair may have been pruned: recount with everything, then prune again
            stats.prune(threshold)
            stats.recount()
            if not stats.active:
                break
            best = stats.best()
            threshold = stats.active[best] * i / (i + 10000.0)
            stats.prune(threshold)
        if stats.active[best] < min_frequency:
            break
        merges.append(best)
        if best[0] + best[1] not in keys:
            keys[best[0] + best[1]] = keys[best[0]][:-4] + keys[best[1]]
        _apply_merge(best, words, freqs, where, stats, odd_whitespace)
        if not i % _PRUNE_EVERY:
            stats.prune(threshold)
    return merges


def _apply_merge(pair, words, freqs, where, stats: _PairStatistics, odd_whitespace) -> None:
    """Merge ``pair`` in every word listed for it and update the counts like subword-nmt does."""
    first, second = pair
    merged = first + second
    active = stats.active
    touched: set = set()

    def add(p, freq, j, delta):
        active[p] = active.get(p, 0) + delta * freq
        in_words = where.get(p)
        if in_words is None:
            where[p] = {j: delta}
        else:
            in_words[j] = in_words.get(j, 0) + delta
        touched.add(p)

    active[pair] = 0
    listed = where.get(pair, {})
    where[pair] = {}
    for j, occurrences in listed.items():
        if occurrences < 1:
            continue
        old = words[j]
        freq = freqs[j]
        n = len(old)
        if j in odd_whitespace:
            new = _regex_merge(old, first, second)
        else:
            new = []
            start = 0
            while True:
                try:
                    k = old.index(first, start)
                except ValueError:
                    new.extend(old[start:])
                    break
                if k + 1 < n and old[k + 1] == second:
                    new.extend(old[start:k])
                    new.append(merged)
                    start = k + 2
                else:
                    new.extend(old[start:k + 1])
                    start = k + 1
        words[j] = new

        # pairs that disappear (same scan and skip rules as subword-nmt's update_pair_statistics)
        k = 0
        while True:
            try:
                k = old.index(first, k)
            except ValueError:
                break
            if k < n - 1 and old[k + 1] == second:
                if k:
                    add((old[k - 1], old[k]), freq, j, -1)
                if k < n - 2:
                    if old[k + 2] != first or k >= n - 3 or old[k + 3] != second:
                        add((old[k + 1], old[k + 2]), freq, j, -1)
                k += 2
            else:
                k += 1
        # pairs that appear, around every occurrence of the merged symbol
        m = len(new)
        k = 0
        while True:
            try:
                k = new.index(merged, k)
            except ValueError:
                break
            if k:
                add((new[k - 1], new[k]), freq, j, 1)
            if k < m - 1 and new[k + 1] != merged:
                add((new[k], new[k + 1]), freq, j, 1)
            k += 1

    active[pair] = 0
    touched.add(pair)
    for p in touched:
        count = active.get(p)
        if count is not None:
            stats.push(p, count)


def _regex_merge(symbols: list[str], first: str, second: str) -> list[str]:
    """subword-nmt's replace_pair for one word: a regex over the space-joined symbols."""
    pattern = re.compile(r"(?<!\S)" + re.escape(first + " " + second) + r"(?!\S)")
    return pattern.sub(lambda _: first + second, " ".join(symbols)).split(" ")


# ----------------------------------------------------------------------------------------------
# Codes files


def write_codes(merges: Iterable[tuple[str, str]], path) -> None:
    """Write a ``#version: 0.2`` codes file (one merge per line, ``first second``), atomically."""
    path = Path(path)
    lines = [CODES_HEADER]
    for n, (first, second) in enumerate(merges, start=1):
        if not first or not second or any(c in first + second for c in " \n\r"):
            raise BPEError(f"merge {n} {(first, second)!r} cannot be written: symbols must be "
                           "non-empty and contain no space or newline")
        lines.append(f"{first} {second}")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_codes(path) -> list[tuple[str, str]]:
    """Read a ``#version: 0.2`` codes file as written by :func:`write_codes` or subword-nmt."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            lines = list(read_text_lines(f, str(path)))
    except OSError as err:
        raise BPEError(f"cannot read BPE codes {path}: {err.strerror}") from None
    if not lines or lines[0].rstrip("\r\n") != CODES_HEADER:
        first = lines[0].rstrip("\r\n") if lines else "<empty file>"
        raise BPEError(f"{path}:1: expected the header {CODES_HEADER!r}, found {first!r}; "
                       "this reader only accepts subword-nmt version 0.2 codes (learn them with "
                       "tools/learn_bpe.py)")
    body = [line.rstrip("\n") for line in lines[1:]]
    while body and not body[-1].strip("\r"):  # trailing blank lines are fine
        body.pop()
    merges = []
    for lineno, line in enumerate(body, start=2):
        parts = line.strip("\r\n ").split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise BPEError(f"{path}:{lineno}: malformed merge {line!r}: expected two symbols "
                           "separated by one space")
        merges.append((parts[0], parts[1]))
    return merges


# ----------------------------------------------------------------------------------------------
# Applying


class BPE:
    """Segment words with learned merges; the result of every word is cached.

    >>> bpe = BPE([("u", "n"), ("a", "b"), ("ab", "l"), ("abl", "e</w>")])
    >>> bpe.segment_tokens(["unable", "tab"])
    ['un@@', 'able', 't@@', 'a@@', 'b']
    """

    def __init__(self, merges: list[tuple[str, str]], separator: str = "@@"):
        self.merges = [tuple(m) for m in merges]
        for n, m in enumerate(self.merges, start=1):
            if len(m) != 2 or not all(isinstance(s, str) and s for s in m):
                raise BPEError(f"merge {n} {m!r} is not a pair of non-empty strings")
        self.separator = separator
        self.ranks: dict = {}
        for rank, pair in enumerate(self.merges):
            self.ranks.setdefault(pair, rank)  # a repeated merge keeps its first rank
        self._never = len(self.merges)  # rank of pairs that are not merges
        self._sep_space = separator + " "
        self._pieces: dict[str, tuple[str, ...]] = {}  # word -> pieces (segment_tokens' cache)
        self._joined: dict[str, str] = {}  # word -> " ".join(pieces) (segment's cache)

    @classmethod
    def from_codes_file(cls, path, separator: str = "@@") -> "BPE":
        return cls(read_codes(path), separator=separator)

    def segment(self, line: str) -> str:
        """Segment a space-separated line; runs of spaces collapse, the ends are stripped."""
        words = line.strip("\r\n ").split(" ")
        joined = self._joined
        try:
            return " ".join([joined[w] for w in words])
        except KeyError:  # an unseen word or an empty one (from repeated spaces)
            get = joined.get
            return " ".join([get(w) or self._add(w) for w in words if w])

    def segment_tokens(self, tokens: list[str]) -> list[str]:
        """Segment each token; a token becomes one or more pieces (empty tokens are skipped)."""
        pieces = self._pieces
        out: list[str] = []
        for token in tokens:
            if token:
                out.extend(pieces.get(token) or self._add_pieces(token))
        return out

    def _add(self, word: str) -> str:
        joined = self._joined[word] = self._sep_space.join(self._merge_word(word))
        return joined

    def _add_pieces(self, word: str) -> tuple[str, ...]:
        symbols = self._merge_word(word)
        sep = self.separator
        pieces = self._pieces[word] = tuple([s + sep for s in symbols[:-1]] + [symbols[-1]])
        return pieces

    def _merge_word(self, word: str) -> list[str]:
        if len(word) == 1:
            return [word]
        symbols = list(word[:-1])
        symbols.append(word[-1] + END_OF_WORD)
        get, never = self.ranks.get, self._never
        ranks = list(map(get, zip(symbols, symbols[1:]), repeat(never)))  # ranks[k]: symbols k, k+1
        while ranks:
            best = min(ranks)
            if best == never:
                break
            k = ranks.index(best)
            merged = symbols[k] + symbols[k + 1]
            if ranks.count(best) == 1:  # the usual case: one occurrence, update its neighbours
                symbols[k:k + 2] = [merged]
                del ranks[k]
                if k:
                    ranks[k - 1] = get((symbols[k - 1], merged), never)
                if k < len(ranks):
                    ranks[k] = get((merged, symbols[k + 1]), never)
                continue
            new = symbols[:k]  # merge every occurrence, left to right, without overlaps
            n = len(symbols)
            while k < n:
                if k < n - 1 and ranks[k] == best:
                    new.append(merged)
                    k += 2
                else:
                    new.append(symbols[k])
                    k += 1
            symbols = new
            ranks = list(map(get, zip(symbols, symbols[1:]), repeat(never)))
        last = symbols[-1]
        if last == END_OF_WORD:
            symbols.pop()
        elif last.endswith(END_OF_WORD):
            symbols[-1] = last[: -len(END_OF_WORD)]
        return symbols


def remove_bpe(line: str, separator: str = "@@") -> str:
    """Undo BPE: delete ``separator + " "`` and a trailing separator (subword-nmt's sed rule).

    >>> remove_bpe("un@@ believ@@ able news@@")
    'unbelievable news'
    """
    sep = re.escape(separator)
    return re.sub(f"({sep} )|({sep} ?$)", "", line)
