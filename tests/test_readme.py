"""The README's promises that code can check: its Python block runs as written (against a run
directory laid out as README command 1 leaves it), and it stays short enough to read."""
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_python_block_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) == 1
    run = tmp_path / "checkpoints" / "demo-en-de" / "decoder"           # what command 1 leaves behind
    run.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "data" / "checkpoint_v0.1.pt", run / "checkpoint_best.pt")   # a tiny model
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 3                                            # three translations, then a 3-best list
    scores = [float(line.split()[0]) for line in lines]
    assert all(s <= 0 for s in scores) and scores[3:] == sorted(scores[3:], reverse=True)


def test_readme_is_short_and_keeps_its_two_commands():
    assert len(README.splitlines()) <= 190                               # cut to what a reader needs (docs/ has the rest)
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith(("python3 -m venv", ". .venv/bin/activate"))]
    assert len(commands) == 2 and "pip install -e ." in commands[0] and "python -m pytest" in commands[1]
    assert "python -m pytest" in (REPO / ".ci" / "run").read_text()       # CI runs the README's test command


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``markdown``, as lists of stripped cells."""
    lines = markdown[markdown.index("\n|") + 1:].splitlines()
    rows = []
    for line in lines[2:]:                                                # after the header and its rule
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_results_are_the_studies_tables():
    """One home per number: the README's demo table repeats the first table of each direction's
    results document (epochs, CPU minutes, test BLEU with its mark), row by row in Table 3 order."""
    readme = table_rows(README.split("## Results on the demo", 1)[1])
    assert len(readme) == 9
    for first_cell, pair in ((2, "en-vi"), (5, "en-de")):
        doc = table_rows((REPO / "docs" / f"results-demo-{pair}.md").read_text(encoding="utf-8"))
        assert len(doc) == len(readme), pair
        for ours, theirs in zip(readme, doc):
            assert ours[1] == theirs[1], (pair, ours, theirs)           # the LR
            dev_ppl, bleu, epochs, minutes = theirs[2], theirs[3], theirs[5], theirs[6]
            if dev_ppl.startswith("unfinished") or dev_ppl == "not run":  # a study still under way
                status = "running" if dev_ppl.startswith("unfinished") else "queued"
                assert ours[first_cell:first_cell + 3] == [status, "", ""], (pair, ours)
                continue
            epochs = epochs.split(" (")[0]                      # "84 (best 74)", "100 (best 97; epoch cap)" -> the count
            assert ours[first_cell:first_cell + 3] == [epochs, minutes, bleu], (pair, ours, theirs)
