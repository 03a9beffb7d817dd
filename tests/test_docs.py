"""The documentation's promises that code can check: docs/README.md indexes every file of docs/,
the reference documents (README.md and docs/*.md; not docs/notes/) narrate no work history, and a
number that several documents repeat is the same everywhere: the demo corpus' pair counts (counted
here from data/demo), each results document's two main tables, and the scores README.md and
docs/experiments.md quote from the documents that measured them."""
import gzip
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
NOTES = DOCS / "notes"
PAIRS = {"en-vi": "En→Vi", "en-de": "En→De"}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def reference_docs() -> dict[str, str]:
    """README.md and every Markdown file directly in docs/ (the notes are not reference)."""
    docs = {"README.md": read(REPO / "README.md")}
    docs.update({f"docs/{p.name}": read(p) for p in sorted(DOCS.glob("*.md"))})
    return docs


def prose(markdown: str) -> str:
    """``markdown`` without its fenced code blocks."""
    return re.sub(r"```.*?```", "", markdown, flags=re.S)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(markdown: str, header: bool = False) -> list[list[list[str]]]:
    """Every Markdown table of ``markdown``: its body rows (with ``header``, its header row first)
    as lists of stripped cells."""
    found, rows, seen_rule = [], None, False
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if rows is None:
                rows, seen_rule = ([cells(line)] if header else []), False
            elif not seen_rule and set(line) <= set("|-: "):
                seen_rule = True
            else:
                rows.append(cells(line))
        elif rows is not None:
            found.append(rows)
            rows = None
    return found


def column(markdown: str, name: str) -> set[str]:
    """The cells of every column headed ``name`` in the tables of ``markdown``."""
    values = set()
    for head, *body in tables(markdown, header=True):
        for i, title in enumerate(head):
            if title == name:
                values |= {row[i] for row in body if i < len(row)}
    return values


def numbers(text: str) -> set[str]:
    """The numbers with two decimals in ``text`` (scores: BLEU, perplexities, differences)."""
    return set(re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])", text))


# --- the index -----------------------------------------------------------------------------------

def test_the_index_lists_every_file_of_docs_and_its_notes():
    index = read(DOCS / "README.md")
    links = set(re.findall(r"\]\(([^)#]+)\)", index))
    files = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.is_file()} - {"README.md"}
    assert not files - links, f"docs/README.md does not list {sorted(files - links)}"
    local = {link for link in links if "://" not in link}
    assert all((DOCS / link).is_file() for link in local), sorted(l for l in local if not (DOCS / l).is_file())


def test_every_note_is_in_the_notes_index():
    index = read(NOTES / "README.md")
    for note in NOTES.glob("*.md"):
        if note.name != "README.md":
            assert f"]({note.name})" in index, note.name


# --- reference, not a lab notebook --------------------------------------------------------------

HISTORY = re.compile(
    r"\bissue[ -]?#?\d+"                                    # "Issue 25", "issue-25"
    r"|\bsessions?\b"                                       # "this session", "the next session"
    r"|\b(?:first|second|third|earlier|previous|next|last) (?:run|attempt)s?\b"
    r"|\b20\d\d-\d\d-\d\d\b",                               # dates of work
    re.I)


@pytest.mark.parametrize("name", sorted(reference_docs()))
def test_reference_docs_narrate_no_work_history(name):
    hits = [m.group(0) for m in HISTORY.finditer(reference_docs()[name])]
    assert not hits, f"{name}: {hits}: how a result was reached belongs in docs/notes/"


# --- numbers that repeat ------------------------------------------------------------------------

def line_count(path: Path) -> int:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return sum(1 for _ in f)


def corpus_counts() -> dict[str, dict[str, int]]:
    """Pairs per split of each demo direction, counted from data/demo (both sides must agree)."""
    counts = {}
    for pair in PAIRS:
        src, tgt = pair.split("-")
        counts[pair] = {}
        for split in ("train", "dev", "test"):
            n = {line_count(REPO / "data" / "demo" / pair / f"{split}.{lang}.gz") for lang in (src, tgt)}
            assert len(n) == 1, (pair, split, n)
            counts[pair][split] = n.pop()
    return counts


def test_corpus_pair_counts_agree_with_data_demo():
    """A count near a training-set size is that size: 33,175 and 13,774 pairs, as data/demo holds.
    The one exception says what it is: the pairs the data preparation keeps ("keeps N of ...")."""
    counts = corpus_counts()
    docs = reference_docs()
    for pair, label in PAIRS.items():
        train = counts[pair]["train"]
        assert f"{label} {train:,}" in docs["README.md"], (pair, train)
        triple = f"{label} {train:,} / {counts[pair]['dev']:,} / {counts[pair]['test']:,}"
        assert triple in docs["docs/demo.md"], triple                # train / dev / test
        for name, text in docs.items():
            for m in re.finditer(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{4,})(?![\d.,]\d)", text):
                value = int(m.group(1).replace(",", ""))
                if value == train or abs(value - train) > train // 100:
                    continue
                kept = re.match(r" of \S+ \d[\d,]* training pairs", text[m.end():])
                assert text[:m.start()].endswith("keeps ") and kept, (name, m.group(0), train)
                assert train - 10 <= value < train, (name, m.group(0), train)


def results_doc(pair: str) -> str:
    return read(DOCS / f"results-demo-{pair}.md")


def unmarked(row: list[str]) -> list[str]:
    return [re.sub(r" \([+−]\)$", "", cell) for cell in row]


@pytest.mark.parametrize("pair", PAIRS)
def test_the_table_against_the_converged_baseline_repeats_the_main_table(pair):
    """The same runs, marked against another baseline: every cell but the marks is the first table's."""
    doc = results_doc(pair)
    main = tables(doc)[0]
    converged = tables(doc.split("## Against the converged baseline", 1)[1])[0]
    assert [unmarked(r) for r in converged] == [unmarked(r) for r in main]


PAPER = {"23.23", "23.62", "26.12", "27.22", "29.57"}     # the paper's own scores, quoted for comparison


def test_quoted_scores_are_the_measured_ones():
    """Every score README.md and docs/experiments.md quote is one that a measuring document (the
    results documents, demo.md, speed.md) holds, and none is a superseded test BLEU: one in a "test
    BLEU" column of the notes (earlier studies) that no reference table holds."""
    measuring = "".join(read(DOCS / name) for name in
                        ("results-demo-en-vi.md", "results-demo-en-de.md", "demo.md", "speed.md"))
    home = numbers(measuring) | PAPER
    current = numbers(" ".join(cell for doc in reference_docs().values()
                               for table in tables(doc) for row in table for cell in row))
    superseded = numbers(" ".join(v for p in NOTES.glob("*.md") for v in column(read(p), "test BLEU"))) - current
    assert {"16.88", "20.35", "31.70"} <= superseded                    # the first En→Vi study's
    for name in ("README.md", "docs/experiments.md"):
        text = re.sub(r"Python \d+\.\d+", "", prose(reference_docs()[name]))      # a version, not a score
        quoted = numbers(text)
        assert quoted, name
        assert not quoted - home, f"{name} quotes {sorted(quoted - home)}, which no measuring document holds"
        assert not quoted & superseded, f"{name} quotes superseded {sorted(quoted & superseded)}"


def test_relative_links_resolve():
    """Every relative link of README.md and docs/ (notes included) names a file that exists."""
    for path in [REPO / "README.md"] + sorted(DOCS.rglob("*.md")):
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(path)):
            if "://" not in link:
                assert (path.parent / link).exists(), f"{path.relative_to(REPO)}: {link}"


# -- the reading tables and the walkthrough name code that exists ------------------------------

CODE_PATH = r"(?:nmt|tools|tests)/[\w/]+\.py|train\.py|translate\.py"


def code_references(markdown: str) -> list[tuple[str, str]]:
    """(file, name) for every reference to code: a reading table's "`file.py`: `a`, `b`; ..." and
    the walkthrough's "`file.py: a`, `b`" (names after a comma belong to the same file)."""
    refs = []
    for path, names in re.findall(rf"`({CODE_PATH})`: ((?:`[^`]+`(?:, )?)+)", markdown):
        refs += [(path, name) for name in re.findall(r"`([^`]+)`", names)]
    for path, first, more in re.findall(rf"`({CODE_PATH}):\s+([\w.]+)`((?:,\s+`[\w.]+`)*)", markdown):
        refs += [(path, name) for name in [first, *re.findall(r"`([\w.]+)`", more)]]
    return [(path, re.sub(r"\(.*\)$", "", name)) for path, name in refs]


def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assignments of a Python file, and "Class.member"."""
    import ast
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{member.name}")
                elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                    names.add(f"{node.name}.{member.target.id}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/reading-guide.md", "docs/walkthrough.md"])
def test_every_code_reference_resolves(doc):
    """Each `file: function` of README's reading table, the reading guide and the walkthrough names a
    file that exists and a function, class, method or constant defined in it."""
    text = read(REPO / doc)
    refs = code_references(text)
    assert len(refs) >= 20, f"{doc}: only {len(refs)} code references found; has the format changed?"
    missing = [path for path in set(re.findall(rf"`({CODE_PATH})[`:]", text)) if not (REPO / path).is_file()]
    assert not missing, f"{doc} names files that do not exist: {sorted(missing)}"
    unresolved = sorted({f"{path}: {name}" for path, name in refs if name not in defined_names(REPO / path)})
    assert not unresolved, f"{doc}: these references name nothing defined there: {unresolved}"


def test_code_references_are_read_as_meant():
    text = ("| x | `nmt/a.py`: `f`, `C.m(\"y\")`; `nmt/b.py`: `g` | `z` |\n"
            "Then (`nmt/c.py: h`, `k`) and `train.py: main` calls `nmt/d.py:\n D.e`; `other`.")
    assert code_references(text) == [("nmt/a.py", "f"), ("nmt/a.py", "C.m"), ("nmt/b.py", "g"),
                                     ("nmt/c.py", "h"), ("nmt/c.py", "k"), ("train.py", "main"), ("nmt/d.py", "D.e")]
