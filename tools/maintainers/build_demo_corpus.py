"""Build the demo parallel corpora in data/demo/ from LibreOffice's help (Debian packages).

Two directions, English source, as in the paper: en-de (its WMT14 direction) and en-vi (its
IWSLT15 direction). LibreOffice ships its help as one compiled HTML page per help file under
usr/share/libreoffice/help/<lang>/text/; every paragraph and heading carries the same id in every
language (``<p id="par_id3145173">``, ``<h2 id="hd_id3148946">``), so the pairs are exact:
(help file, element id, occurrence) -> (English text, translated text).

Rebuild (downloads the three .deb files with ``apt-get download``, no root needed)::

    python tools/maintainers/build_demo_corpus.py

or from packages already unpacked with ``dpkg-deb -x pkg.deb DIR`` (all three into DIR)::

    python tools/maintainers/build_demo_corpus.py --unpacked DIR

Output per direction: {train,dev,test}.{en,<tgt>}.gz (gzip with mtime 0, so a rebuild is
byte-identical), plus data/demo/manifest.json (counts, sha256, drop counts, histograms) and
data/demo/README.md, both generated from the same numbers. data/demo/LICENSE is hand-written.

Example of the text extraction (tags removed, block tags become spaces, hidden platform
variants other than the default dropped, entities unescaped):

>>> extract_segments('<p id="par_id1">Press <span class="switchinline"><span hidden="true" '
...     'id="MACx" class="MAC">Command</span><span hidden="true" id="defaultx">Ctrl</span>'
...     '</span>&nbsp;+&nbsp;F<br>to <span class="emph">find</span>.</p>')
[('par_id1#0', 'Press Ctrl + F to find.')]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nmt.errors import NmtError
from nmt.files import DEMO_DIR

DEFAULT_OUT = DEMO_DIR
SEED = 1234                      # page -> split assignment
EVAL_TARGET = 1250               # page-unique pairs wanted in each of dev and test
EVAL_MIN = 1000                  # the build fails if dev or test ends up smaller
EVAL_MAX_PAGE_PAIRS = 120        # pages with more pairs stay in train (keeps dev/test diverse)
MAX_WORDS = 200                  # pairs with a longer side are dropped as overlong
HELP_DIR = "usr/share/libreoffice/help"
ENGLISH = ("libreoffice-help-en-us", "en-US")
DIRECTIONS = {                   # direction -> (package, help language dir, target file suffix)
    "en-de": ("libreoffice-help-de", "de", "de"),
    "en-vi": ("libreoffice-help-vi", "vi", "vi"),
}
SPLITS = ("train", "dev", "test")
HISTOGRAM_BINS = ((1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 39), (40, 79), (80, MAX_WORDS))


class DemoCorpusError(NmtError):
    """Bad input for the corpus build (missing package tree, failed download, too little data)."""


# --------------------------------------------------------------------------- text extraction

SEGMENT_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
# tags that separate words: a space is emitted where they open or close
BLOCK_TAGS = SEGMENT_TAGS | {"br", "div", "li", "ul", "ol", "td", "th", "tr", "table", "dt", "dd",
                             "pre", "blockquote", "section", "header", "footer", "nav", "aside"}
VOID_TAGS = {"br", "img", "input", "meta", "link", "hr", "wbr", "area", "base", "col", "source"}
SKIP_TAGS = {"script", "style", "noscript", "button", "label", "head", "title"}
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"))


def normalize_space(text: str) -> str:
    """Drop zero-width characters, turn every run of (Unicode) whitespace into one space.

    >>> normalize_space("  a\\u00a0 b\\t\\nc\\u200b ")
    'a b c'
    """
    return " ".join(text.translate(INVISIBLE).split())


class _SegmentParser(html.parser.HTMLParser):
    """Collects the text of every <p>/<h1..6> that has an id, in document order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []   # (tag, starts a skipped subtree)
        self.skip_depth = 0                       # >0 while inside a skipped subtree
        self.current: tuple[str, str, list[str]] | None = None   # (tag, id, text parts)
        self.current_depth = 0                    # stack depth of the open segment element
        self.segments: list[tuple[str, str]] = []

    def _close_segment(self):
        tag, seg_id, parts = self.current
        self.segments.append((seg_id, normalize_space("".join(parts))))
        self.current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in SEGMENT_TAGS and attrs.get("id"):
            if self.current is not None:          # HTML: a new <p> implicitly closes the open one
                self._close_segment()
            if self.skip_depth == 0:
                self.current = (tag, attrs["id"], [])
                self.current_depth = len(self.stack) + 1
        elif self.current is not None and tag in BLOCK_TAGS:
            self.current[2].append(" ")
        if tag in VOID_TAGS:
            return
        # hidden="true" marks platform/application variants (MAC, WIN, CALC, ...); the one
        # whose id starts with "default" is what the help shows by default, so keep that one.
        hidden = "hidden" in attrs and not (attrs.get("id") or "").startswith("default")
        # a hidden block variant may hold whole id'd paragraphs: skip inline text only
        skip = tag in SKIP_TAGS or (hidden and self.current is not None)
        self.stack.append((tag, skip))
        self.skip_depth += skip

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                break
        else:
            return                                # stray end tag: ignore
        while len(self.stack) > depth:
            _, skip = self.stack.pop()
            self.skip_depth -= skip
            if self.current is not None and len(self.stack) < self.current_depth:
                self._close_segment()
        if self.current is not None and tag in BLOCK_TAGS:
            self.current[2].append(" ")

    def handle_data(self, data):
        if self.current is not None and self.skip_depth == 0:
            self.current[2].append(data)


def extract_segments(page_html: str) -> list[tuple[str, str]]:
    """Return [(key, text)] for the id'd paragraphs/headings of one help page.

    The key is ``id#n`` where n counts earlier occurrences of the same id on the page (embedded
    sections can repeat an id), so keys are unique per page and agree across languages.
    """
    parser = _SegmentParser()
    parser.feed(page_html)
    parser.close()
    if parser.current is not None:
        parser._close_segment()
    seen: Counter = Counter()
    keyed = []
    for seg_id, text in parser.segments:
        keyed.append((f"{seg_id}#{seen[seg_id]}", text))
        seen[seg_id] += 1
    return keyed


def read_pages(help_root: Path) -> dict[str, list[tuple[str, str]]]:
    """Map page path (relative to help/<lang>/) -> its segments."""
    pages = {}
    for path in sorted((help_root / "text").rglob("*.html")):
        rel = path.relative_to(help_root).as_posix()
        pages[rel] = extract_segments(path.read_text(encoding="utf-8"))
    return pages


# --------------------------------------------------------------------------- filtering rules

WORD = re.compile(r"[^\W\d_]+")
# the help compiler leaves "[text/scalc/01/func_x.xhp#x_head not found]." where an embed failed
BROKEN_REFERENCE = re.compile(r"\[[^\]]*\.xhp#[^\]]* not found\]")
# letters that only Vietnamese (among the languages here) writes: đ and any letter carrying a
# combining mark after NFD (tones and the breve/circumflex/horn vowels)
_VI_LETTERS = "đĐ"


def has_vietnamese_letters(text: str) -> bool:
    """True if the text has a letter with a diacritic (Vietnamese tone/vowel marks or đ).

    >>> has_vietnamese_letters("Chèn hàng"), has_vietnamese_letters("Insert Rows")
    (True, False)
    """
    if any(ch in _VI_LETTERS for ch in text):
        return True
    return any(unicodedata.combining(ch) for ch in unicodedata.normalize("NFD", text))


def looks_english(target: str, english_vocab: set[str]) -> bool:
    """The Vietnamese-side rule: no Vietnamese letter at all, and at least half of its words
    (lower-cased) are words of the English side's vocabulary.

    >>> vocab = {"select", "the", "cell", "range"}
    >>> looks_english("Select the cell range", vocab), looks_english("Chọn phạm vi ô", vocab)
    (True, False)
    """
    if has_vietnamese_letters(target):
        return False
    words = [w.lower() for w in WORD.findall(target)]
    if not words:
        return True                               # numbers/symbols only: nothing Vietnamese
    return sum(w in english_vocab for w in words) * 2 >= len(words)


@dataclass
class Pair:
    page: str
    en: str
    tgt: str


@dataclass
class DirectionResult:
    splits: dict[str, list[Pair]]
    dropped: dict[str, int] = field(default_factory=dict)
    candidate_pairs: int = 0                      # id-matched segments before any rule
    pages: dict[str, int] = field(default_factory=dict)


def pair_pages(en_pages, tgt_pages, drop_english_target: bool) -> tuple[list[Pair], dict, int]:
    """Match segments by (page, key) and apply the per-pair rules, in order, counting drops."""
    dropped = Counter()
    matched = []
    for page in sorted(en_pages.keys() | tgt_pages.keys()):
        en_segs = dict(en_pages.get(page, []))
        tgt_segs = dict(tgt_pages.get(page, []))
        dropped["1 no counterpart (id on one side only)"] += len(en_segs.keys() ^ tgt_segs.keys())
        for key, en in en_pages.get(page, []):
            if key in tgt_segs:
                matched.append(Pair(page, en, tgt_segs[key]))
    vocab = {w.lower() for p in matched for w in WORD.findall(p.en)}
    kept = []
    for pair in matched:
        en_words, tgt_words = len(pair.en.split()), len(pair.tgt.split())
        if not pair.en or not pair.tgt:
            rule = "2 empty side"
        elif BROKEN_REFERENCE.search(pair.en) or BROKEN_REFERENCE.search(pair.tgt):
            rule = "3 broken cross-reference ([... not found])"
        elif pair.en == pair.tgt:
            rule = "4 identical sides (untranslated)"
        elif drop_english_target and looks_english(pair.tgt, vocab):
            rule = "5 target still English (no Vietnamese letters, >=50% English words)"
        elif max(en_words, tgt_words) > MAX_WORDS:
            rule = f"6 overlong (a side over {MAX_WORDS} words)"
        else:
            kept.append(pair)
            continue
        dropped[rule] += 1
    return kept, dict(dropped), len(matched)


def split_pairs(pairs: list[Pair], seed: int) -> tuple[dict[str, list[Pair]], dict, dict]:
    """Assign whole pages to dev/test/train with a seeded shuffle, then deduplicate.

    A pair (en, tgt) that occurs on several pages goes to train if any of its pages is a train
    page, else dev, else test, and is kept once. Dev/test pairs whose English side also occurs
    in train (or test pairs whose English occurs in dev) are dropped, so no source sentence is
    seen in training and scored again.
    """
    per_page = Counter(p.page for p in pairs)
    pages_of_en: dict[str, set[str]] = {}
    for p in pairs:
        pages_of_en.setdefault(p.en, set()).add(p.page)
    # pairs whose English occurs on no other page: these survive dedup and leakage for sure
    own = Counter(p.page for p in pairs if len(pages_of_en[p.en]) == 1)
    pages = sorted(per_page)
    random.Random(seed).shuffle(pages)
    assignment, filled = {}, {"dev": 0, "test": 0}
    for page in pages:
        split = "train"
        if per_page[page] <= EVAL_MAX_PAGE_PAIRS:
            for name in ("dev", "test"):
                if filled[name] < EVAL_TARGET:
                    split = name
                    filled[name] += own[page]
                    break
        assignment[page] = split
    rank = {name: i for i, name in enumerate(SPLITS)}
    best: dict[tuple[str, str], str] = {}
    for p in pairs:
        split = assignment[p.page]
        if (p.en, p.tgt) not in best or rank[split] < rank[best[(p.en, p.tgt)]]:
            best[(p.en, p.tgt)] = split
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    emitted = set()
    for p in pairs:                               # document order; first preferred occurrence
        key = (p.en, p.tgt)
        if key not in emitted and best[key] == assignment[p.page]:
            emitted.add(key)
            splits[assignment[p.page]].append(p)
    dropped = Counter({"7 duplicate pair (kept once)": len(pairs) - len(emitted)})
    seen_en = {p.en for p in splits["train"]}
    for name in ("dev", "test"):
        kept = [p for p in splits[name] if p.en not in seen_en]
        dropped[f"8 {name}: English side also in an earlier split"] = len(splits[name]) - len(kept)
        splits[name] = kept
        seen_en |= {p.en for p in kept}
    page_counts = Counter(assignment.values())
    return splits, dict(dropped), {name: page_counts[name] for name in SPLITS}


def build_direction(en_pages, tgt_pages, vietnamese: bool, seed: int) -> DirectionResult:
    pairs, dropped, candidates = pair_pages(en_pages, tgt_pages, drop_english_target=vietnamese)
    splits, split_dropped, page_counts = split_pairs(pairs, seed)
    for name in ("dev", "test"):
        if len(splits[name]) < EVAL_MIN:
            raise DemoCorpusError(f"{name} has only {len(splits[name])} pairs (< {EVAL_MIN}); "
                                  f"raise EVAL_TARGET in {__file__}")
    return DirectionResult(splits, {**dropped, **split_dropped}, candidates, page_counts)


# --------------------------------------------------------------------------- output

def gzip_bytes(lines: list[str]) -> bytes:
    """Deterministic gzip: no file name, mtime 0."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return buffer.getvalue()


def histogram(texts) -> dict[str, int]:
    """Count segments per word-count bin.

    >>> histogram(["a", "a b c", "a b c d e"])["3-4"]
    1
    """
    names = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in HISTOGRAM_BINS]
    counts = dict.fromkeys(names, 0)
    for text in texts:
        n = len(text.split())
        for name, (lo, hi) in zip(names, HISTOGRAM_BINS):
            if lo <= n <= hi:
                counts[name] += 1
                break
    return counts


def check_segment(text: str, where: str):
    if not text or text != normalize_space(text) or "\t" in text or "\n" in text:
        raise DemoCorpusError(f"{where}: segment is empty or not whitespace-normalized: {text!r}")


def write_direction(out_dir: Path, direction: str, result: DirectionResult) -> dict:
    tgt = DIRECTIONS[direction][2]
    target_dir = out_dir / direction
    target_dir.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for split in SPLITS:
        pairs = result.splits[split]
        counts[split] = len(pairs)
        for lang, lines in (("en", [p.en for p in pairs]), (tgt, [p.tgt for p in pairs])):
            for i, line in enumerate(lines):
                check_segment(line, f"{direction}/{split}.{lang} line {i + 1}")
            data = gzip_bytes(lines)
            name = f"{split}.{lang}.gz"
            (target_dir / name).write_bytes(data)
            files[f"{direction}/{name}"] = {"lines": len(lines), "bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}
    everything = [p for split in SPLITS for p in result.splits[split]]
    return {
        "target_language": tgt,
        "pairs": counts,
        "pages": result.pages,
        "id_matched_segments": result.candidate_pairs,
        "dropped": dict(sorted(result.dropped.items())),
        "pairs_with_5_or_more_english_words": sum(len(p.en.split()) >= 5 for p in everything),
        "histogram_en_words": histogram(p.en for p in everything),
        "histogram_target_words": histogram(p.tgt for p in everything),
        "files": files,
    }


def render_readme(manifest: dict) -> str:
    pk = manifest["packages"]
    lines = [
        "# Demo corpora: LibreOffice help, English→German and English→Vietnamese",
        "",
        "Real parallel text for demos and tests, in the paper's two directions: en-de (its WMT14",
        "direction) and en-vi (its IWSLT15 direction, low-resource). Generated by",
        "`tools/maintainers/build_demo_corpus.py`; do not edit by hand (this README and `manifest.json` are",
        "written by the tool). License: MPL-2.0, see `LICENSE`.",
        "",
        "## Source",
        "",
        "Debian 12 (bookworm) packages, built from LibreOffice 7.4 (`helpcontent2`):",
        "",
    ]
    for name, version in pk.items():
        lines.append(f"- `{name}` {version}")
    lines += [
        "",
        "Rebuild (downloads the packages with `apt-get download`, no root needed; byte-identical",
        "output):",
        "",
        "    python tools/maintainers/build_demo_corpus.py",
        "    # or, with the three .deb files unpacked by `dpkg-deb -x PKG.deb DIR` into one DIR:",
        "    python tools/maintainers/build_demo_corpus.py --unpacked DIR",
        "",
        "## Files",
        "",
        "`en-de/{train,dev,test}.{en,de}.gz` and `en-vi/{train,dev,test}.{en,vi}.gz`: gzip, UTF-8,",
        "one segment per line, line-aligned, raw (untokenized) text with whitespace normalized.",
        "`manifest.json` holds the counts and the sha256 of every file.",
        "",
        "| direction | train | dev | test | total | pages train/dev/test |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for direction, info in manifest["directions"].items():
        c, pg = info["pairs"], info["pages"]
        lines.append(f"| {direction} | {c['train']} | {c['dev']} | {c['test']} | "
                     f"{sum(c.values())} | {pg['train']}/{pg['dev']}/{pg['test']} |")
    lines += [
        "",
        "## How pairs are made",
        "",
        "The packages hold the help compiled to HTML, one page per help file",
        f"(`usr/share/libreoffice/help/<lang>/text/**/*.html`, {manifest['english_pages']} pages in",
        "English, the same paths in every language). Every paragraph and heading is an element `<p>`/`<h1>`..`<h6>` with an `id`",
        "(`par_id…`, `hd_id…`) that is the same in all languages, so a pair is",
        "(page, id, n-th occurrence of that id on the page) → (English text, translated text).",
        "",
        "Text extraction: tags are removed; block tags (`<br>`, `<div>`, `<li>`, table cells, …)",
        "become spaces so words are never glued; inline tags (`<span>`, `<a>`, …) add nothing;",
        "entities are unescaped; `<script>`, `<style>`, buttons and labels are dropped; images",
        "contribute nothing (no alt text). Platform/application variants (`hidden` spans such as",
        "the macOS key names) are dropped except the `default` variant, which is what the help",
        "shows outside macOS. Whitespace (including no-break spaces) becomes single spaces and",
        "zero-width characters are removed. Placeholders and literals (`Function(Argument)`,",
        "menu paths such as `Tools - Options`) stay as written.",
        "",
        "## Rules that drop pairs (applied in this order) and how many each dropped",
        "",
        "1. no counterpart: an id on one side only (counted per segment).",
        "2. empty side: a side has no text after extraction (e.g. an image-only paragraph).",
        "3. broken cross-reference: a side contains the help compiler's",
        "   `[text/….xhp#… not found]` placeholder for an embed that failed.",
        "4. identical sides: the translation equals the English text (untranslated, or names",
        "   and code that need no translation).",
        "5. (en-vi only) target still English: the Vietnamese side has no letter with a",
        "   diacritic (no Vietnamese tone or vowel mark, no đ) *and* at least half of its words,",
        "   lower-cased, are words that occur on the English side of the corpus. Real Vietnamese",
        "   text almost always carries diacritics, so this catches paragraphs that the Vietnamese",
        "   package left in English with small edits (which rule 4 misses).",
        f"6. overlong: a side has more than {MAX_WORDS} words.",
        "7. duplicate pair: the same (en, target) pair is kept once; it goes to train if any page",
        "   it occurs on is a train page, else dev, else test.",
        "8. leakage: a dev or test pair whose English side also occurs in train (with another",
        "   translation), or a test pair whose English side occurs in dev.",
        "",
        f"Splits: pages (never pairs) are shuffled with `random.Random({manifest['seed']})` and",
        f"given to dev, then test, until each has at least {EVAL_TARGET} pairs (pages with more",
        f"than {EVAL_MAX_PAGE_PAIRS} pairs stay in train); the rest is train. No page spans two",
        "splits; no pair appears twice.",
        "",
        "| rule | " + " | ".join(manifest["directions"]) + " |",
        "|---|" + "---:|" * len(manifest["directions"]),
    ]
    rules = sorted({r for info in manifest["directions"].values() for r in info["dropped"]})
    for rule in rules:
        row = [str(info["dropped"].get(rule, 0)) for info in manifest["directions"].values()]
        lines.append(f"| {rule} | " + " | ".join(row) + " |")
    row = [str(info["id_matched_segments"]) for info in manifest["directions"].values()]
    lines.append("| (id-matched segments before rules 2-8) | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Length histogram (words, all splits)",
        "",
        "Many segments are short UI labels and headings (\"Insert Rows\", \"Example\"); they are",
        "kept. Words = whitespace-separated tokens.",
        "",
        "| words | " + " | ".join(f"{d} en | {d} {i['target_language']}"
                                  for d, i in manifest["directions"].items()) + " |",
        "|---|" + "---:|" * (2 * len(manifest["directions"])),
    ]
    first = next(iter(manifest["directions"].values()))
    for bin_name in first["histogram_en_words"]:
        cells = []
        for info in manifest["directions"].values():
            cells += [str(info["histogram_en_words"][bin_name]),
                      str(info["histogram_target_words"][bin_name])]
        lines.append(f"| {bin_name} | " + " | ".join(cells) + " |")
    lines.append("")
    for direction, info in manifest["directions"].items():
        lines.append(f"- {direction}: {info['pairs_with_5_or_more_english_words']} of "
                     f"{sum(info['pairs'].values())} pairs have 5 or more English words.")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- packages

def package_version(root: Path, package: str) -> str:
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    if not changelog.is_file():
        raise DemoCorpusError(f"{changelog} is missing: unpack {package} into {root} "
                              f"(apt-get download {package} && dpkg-deb -x {package}_*.deb {root})")
    with gzip.open(changelog, "rt", encoding="utf-8") as f:
        match = re.match(r"\S+ \(([^)]+)\)", f.readline())
    if not match:
        raise DemoCorpusError(f"{changelog}: first line has no version")
    return match.group(1)


def download_and_unpack(workdir: Path, print_fn) -> Path:
    packages = [ENGLISH[0]] + [pkg for pkg, _, _ in DIRECTIONS.values()]
    print_fn(f"apt-get download {' '.join(packages)}")
    run = subprocess.run(["apt-get", "download", *packages], cwd=workdir,
                         capture_output=True, text=True)
    debs = sorted(workdir.glob("*.deb"))
    if run.returncode != 0 or len(debs) != len(packages):
        raise DemoCorpusError(f"apt-get download failed in {workdir}: {run.stderr.strip()} "
                              "(or use --unpacked DIR with the packages already unpacked)")
    root = workdir / "root"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def build(root: Path, out_dir: Path, seed: int = SEED, print_fn=print) -> dict:
    versions = {ENGLISH[0]: package_version(root, ENGLISH[0])}
    for pkg, _, _ in DIRECTIONS.values():
        versions[pkg] = package_version(root, pkg)
    en_root = root / HELP_DIR / ENGLISH[1]
    if not (en_root / "text").is_dir():
        raise DemoCorpusError(f"{en_root / 'text'} is missing: is {root} the unpacked packages?")
    en_pages = read_pages(en_root)
    print_fn(f"{ENGLISH[1]}: {len(en_pages)} pages")
    manifest = {"format": "nmt-demo-corpus/1", "seed": seed, "packages": versions,
                "english_pages": len(en_pages), "directions": {}}
    for direction, (pkg, lang_dir, tgt) in DIRECTIONS.items():
        tgt_pages = read_pages(root / HELP_DIR / lang_dir)
        print_fn(f"{lang_dir}: {len(tgt_pages)} pages")
        result = build_direction(en_pages, tgt_pages, vietnamese=(tgt == "vi"), seed=seed)
        manifest["directions"][direction] = write_direction(out_dir, direction, result)
        print_fn(f"{direction}: " + ", ".join(f"{k} {len(v)}" for k, v in result.splits.items()))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False)
                                           + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(render_readme(manifest), encoding="utf-8")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unpacked", type=Path,
                        help="directory with the three packages unpacked by dpkg-deb -x "
                             "(default: download them with apt-get into a temporary directory)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the page split")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.unpacked:
            build(args.unpacked, args.out, args.seed)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                build(download_and_unpack(Path(tmp), print), args.out, args.seed)
    except DemoCorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
