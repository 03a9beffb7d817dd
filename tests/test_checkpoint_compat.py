"""Checkpoints written before nmt/ moved into subpackages still load and translate the same.

tests/data/checkpoint_v0.1.pt is a tiny BERT-arch model (WordPiece source, BPE target, a stored
length penalty of 1.2) written by ``save_checkpoint`` at commit afc3123, the last commit with the
flat layout; checkpoint_v0.1.json holds that code's own n-best translations with their scores.
A checkpoint holds plain dicts and tensors only (no pickled classes), so moving modules must not
change what it loads into.
"""
import json
from pathlib import Path

import pytest

from nmt import Translator
from nmt.weights.checkpoint import load_checkpoint

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flat_layout_checkpoint_translates_as_it_did():
    expected = json.loads((DATA / "checkpoint_v0.1.json").read_text(encoding="utf-8"))
    assert load_checkpoint(DATA / "checkpoint_v0.1.pt")["written_by"] == f"nmt at commit {expected['commit']}"
    translator = Translator.from_checkpoint(DATA / "checkpoint_v0.1.pt")
    assert translator.lenpen == expected["lenpen"] == 1.2
    results = translator.translate(expected["lines"], beam=expected["beam"], nbest=expected["nbest"])
    for result, want in zip(results, expected["translations"], strict=True):
        assert [h.text for h in result.hypotheses] == [text for text, _ in want]
        assert [h.score for h in result.hypotheses] == pytest.approx([score for _, score in want], abs=1e-5)
        assert (result.text, result.score) == (result.hypotheses[0].text, result.hypotheses[0].score)
