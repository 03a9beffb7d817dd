"""Choosing the length penalty a model translates with by default: the best one on the dev set.

Beam search ranks finished hypotheses by ``sum(log p) / len ** lenpen`` (nmt/decode/length_penalty.py:
``length_normalized``). With ``lenpen = 1.0`` (the paper's) a model trained for only a few epochs on a
small corpus still ends sentences too early, and on the demo the dev set prefers a larger value, not
the same one for both directions (docs/demo.md, "The output length"). The best value depends on
the model, so it is chosen per model, on the dev set only, and stored in the checkpoint (key
``"decoding"``, nmt/weights/checkpoint.py); ``translate.py`` uses it unless ``--lenpen`` is given.
The trainer does this after a stage when ``--lenpen-grid`` is set (the demo preset sets it).

The choice: translate the dev set with each value (beam search), score corpus BLEU, keep the best;
a tie goes to the value listed first. Worked example with a stand-in translator that drops the last
word unless ``lenpen >= 1.5``:

>>> refs = ["the cat sat on the mat today", "a dog ran in the big park"]
>>> def fake(lines, lenpen):
...     return [r if lenpen >= 1.5 else r.rsplit(" ", 1)[0] for r in refs]
>>> choice = choose_length_penalty(fake, ["x", "y"], refs, [1.0, 1.5, 2.0])
>>> choice.lenpen, [round(b, 1) for b in choice.bleu], choice.length_ratio
(1.5, [84.6, 100.0, 100.0], [0.857, 1.0, 1.0])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from nmt.metrics import corpus_bleu


@dataclass
class LengthPenaltyChoice:
    lenpen: float                  # the chosen value (highest dev BLEU; ties: first in the grid)
    grid: list[float]              # the values tried, in order
    bleu: list[float]              # dev BLEU (sacrebleu 13a) per value
    length_ratio: list[float]      # dev hypothesis/reference length ratio per value (BLEU's, 3 decimals)
    beam: int                      # beam size of the dev translations

    def to_dict(self) -> dict:
        """What the checkpoint stores under "decoding" (plain types: loads with weights_only=True)."""
        return {"lenpen": self.lenpen, "chosen_on": "dev BLEU", "beam": self.beam, "grid": list(self.grid),
                "dev_bleu": [round(b, 2) for b in self.bleu], "dev_length_ratio": list(self.length_ratio)}

    def summary(self) -> str:
        rows = ", ".join(f"{g:g}: {b:.2f} (ratio {r:.3f})" for g, b, r in zip(self.grid, self.bleu, self.length_ratio))
        return f"length penalty {self.lenpen:g} chosen by dev BLEU (beam {self.beam}; {rows})"


def parse_grid(text: str) -> list[float]:
    """ "1.0,1.2,1.5" -> [1.0, 1.2, 1.5]; empty -> []. Raises ValueError for anything else."""
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"length penalty grid {text!r}: expected comma-separated numbers, e.g. 1.0,1.2,1.5,2.0") \
            from None
    if len(set(values)) != len(values):
        raise ValueError(f"length penalty grid {text!r} repeats a value")
    return values


def choose_length_penalty(translate: Callable[[Sequence[str], float], list[str]], sources: Sequence[str],
                          references: Sequence[str], grid: Sequence[float], beam: int = 10) -> LengthPenaltyChoice:
    """Translate ``sources`` once per value of ``grid`` with ``translate(lines, lenpen)`` and keep the
    value with the highest corpus BLEU against ``references`` (dev data: never a test set)."""
    if not grid:
        raise ValueError("choose_length_penalty: empty grid")
    bleu, ratio = [], []
    for lenpen in grid:
        score, _ = corpus_bleu(translate(sources, lenpen), references)
        bleu.append(score.score)
        ratio.append(round(score.sys_len / max(score.ref_len, 1), 3))
    best = max(range(len(grid)), key=lambda i: (bleu[i], -i))
    return LengthPenaltyChoice(float(grid[best]), [float(g) for g in grid], bleu, ratio, beam)
