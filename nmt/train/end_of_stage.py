"""What training does with the dev set's text, apart from the loss: the greedy dev BLEU after each
epoch (``--dev-bleu``), and at the end of a stage the length penalty chosen on the dev set and
stored in ``checkpoint_best.pt`` as translate.py's default (``--lenpen-grid``;
nmt/decode/lenpen_choice.py). Both translate exactly as translate.py would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.decode.lenpen_choice import (
    LengthPenaltyChoice,
    choose_length_penalty,
    parse_grid,
)
from nmt.decode.translator import Translator
from nmt.metrics import corpus_bleu
from nmt.model.seq2seq import Seq2Seq
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.weights.checkpoint import update_checkpoint

LENPEN_BEAM = 10              # the beam the length penalty is chosen for (translate.py's default, the paper's)


@dataclass
class DevText:
    sources: list[str]        # the dev set's source lines, as released (every line)
    references: list[str]     # its reference translations


@torch.no_grad()
def greedy_dev_bleu(model: Seq2Seq, source: SourcePipeline, target: TargetPipeline, device: torch.device,
                    dev: DevText) -> float:
    """BLEU (sacrebleu 13a) of greedy translations of the whole dev set, as translate.py --beam 1
    writes them. Greedy keeps it cheap (one decoder pass per token); beam 10 is usually a little higher."""
    model.eval()
    results = Translator(model, source, target, device).translate(dev.sources, beam=1)
    return corpus_bleu([r.text for r in results], dev.references)[0].score


@torch.no_grad()
def store_length_penalty_choice(best: Path, device: torch.device, dev: DevText, grid: str) -> LengthPenaltyChoice:
    """Translate the dev set with ``best`` (beam 10) once per length penalty of ``grid`` and store the
    best by BLEU in that checkpoint's ``decoding`` entry."""
    translator = Translator.from_checkpoint(best, device)

    def translate(lines, lenpen):
        return [r.text for r in translator.translate(lines, beam=LENPEN_BEAM, lenpen=lenpen)]

    choice = choose_length_penalty(translate, dev.sources, dev.references, parse_grid(grid), beam=LENPEN_BEAM)
    update_checkpoint(best, decoding=choice.to_dict())
    return choice
