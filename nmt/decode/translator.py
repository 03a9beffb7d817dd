"""Translation with a trained checkpoint: text lines in, text lines out (beam or greedy search).

:class:`Translator` holds a model and its two text pipelines. Lines are encoded, sorted by length
(longest first), translated in batches of at most ``batch_size`` sentences and ``max_tokens``
padded source tokens (nmt/decode/beam_search.py), decoded (BPE removed, detokenized) and returned in input
order. Empty lines give empty translations; lines longer than the encoder's positions are truncated
with a warning naming the line. ``translate.py`` is the command line over it; the trainer uses it
for the dev BLEU after each epoch and tools/run_experiments.py for the test sets.

Each line gives a :class:`TranslationResult` (as CTranslate2's ``translate_batch`` does): its
``text`` and ``score`` are the best hypothesis's, ``hypotheses`` the n-best list, best first::

    translator = Translator.from_checkpoint("checkpoints/demo-en-de")    # a run directory or a .pt
    result = translator.translate(["Click OK."])[0]
    result.text, result.score                  # ('Klicken Sie auf OK.', -0.41)   (for example)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from nmt.cpu.inference_linear import prepare_for_translation
from nmt.decode.beam_search import Hypothesis, beam_search, greedy_search
from nmt.decode.length_penalty import DEFAULT_LENPEN
from nmt.errors import TranslateError
from nmt.model.seq2seq import Seq2Seq
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.weights.checkpoint import (
    best_checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
)


@dataclass(frozen=True)
class TranslationHypothesis:
    text: str                   # the translation as written (BPE removed, detokenized in raw mode)
    score: float                # beam score: sum of token log-probabilities / length ** lenpen


@dataclass(frozen=True)
class TranslationResult:
    hypotheses: list[TranslationHypothesis]     # n-best, best first (one empty hypothesis for an empty line)

    @property
    def text(self) -> str:
        return self.hypotheses[0].text

    @property
    def score(self) -> float:
        return self.hypotheses[0].score


EMPTY = TranslationResult([TranslationHypothesis("", 0.0)])


def translation_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device ("auto": CUDA when available), checked before anything is loaded:
    CUDA on a machine without it is a TranslateError (training's --device check says the same)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TranslateError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TranslateError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TranslateError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                 f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory: then its best model (finetune, else decoder, ...)."""
    path = Path(path)
    return best_checkpoint_path(path) if path.is_dir() else path


@dataclass
class Translator:
    model: Seq2Seq
    source: SourcePipeline
    target: TargetPipeline
    device: torch.device
    lenpen: float = DEFAULT_LENPEN      # the model's default length penalty (chosen on its dev set, if stored)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", int8: bool = False) -> "Translator":
        """Load for decoding: every Linear swapped for a faster inference kernel (oneDNN-packed fp32
        on the CPU; ``int8``: the decoder's in int8, CPU only; nmt/cpu/inference_linear.py). The default
        length penalty is the checkpoint's dev-set choice (nmt/decode/length_penalty.py), else 1.0."""
        device = translation_device(device)
        path = resolve_checkpoint(path)
        ckpt = load_checkpoint(path)            # checks it has model_spec, model, source and target
        source = SourcePipeline.from_dict(ckpt["source"], what=f"{path}: source")
        target = TargetPipeline.from_dict(ckpt["target"], what=f"{path}: target")
        model, spec = model_from_checkpoint(ckpt, path)
        if len(source.vocab_tokens) != spec.src_vocab_size or len(target.vocab) != spec.tgt_vocab_size:
            raise TranslateError(f"{path}: vocabulary sizes (source {len(source.vocab_tokens)}, target "
                                 f"{len(target.vocab)}) do not match the model ({spec.src_vocab_size}, "
                                 f"{spec.tgt_vocab_size})")
        try:
            model = prepare_for_translation(model.to(device), int8=int8)
        except (ValueError, RuntimeError) as e:
            raise TranslateError(f"{path}: {e}") from None
        lenpen = ckpt.get("decoding", {}).get("lenpen", DEFAULT_LENPEN)
        if not isinstance(lenpen, (int, float)) or isinstance(lenpen, bool):
            raise TranslateError(f"{path}: decoding.lenpen is {lenpen!r}, not a number (a damaged checkpoint?)")
        return cls(model, source, target, device, float(lenpen))

    @property
    def max_source_len(self) -> int:
        return min(int(self.source.max_positions), self.model.encoder_max_positions)

    def encode_lines(self, lines: Sequence[str], name: str = "<input>",
                     warn: Callable[[str], None] = lambda msg: None) -> list[list[int] | None]:
        """Source ids per line; None for an empty line. Overlong lines are truncated with a warning."""
        limit, out = self.max_source_len, []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                out.append(None)
                continue
            ids = self.source.encode(line)
            if len(ids) > limit:
                warn(f"{name}:{number}: {len(ids)} source tokens, more than the encoder's {limit} "
                     f"positions; truncated")
                ids = self.source.encode(line, max_length=limit)
            out.append(ids)
        return out

    def translate(self, lines: Sequence[str], *, beam: int = 10, lenpen: float | None = None, nbest: int = 1,
                  batch_size: int = 64, max_tokens: int | None = 4000, max_len_a: float = 1.2,
                  max_len_b: int = 10, name: str = "<input>", warn: Callable[[str], None] = lambda m: None,
                  progress=None) -> list[TranslationResult]:
        """One result per line, in input order, with ``nbest`` hypotheses; an empty line gives an
        empty translation with score 0. ``lenpen``: None for the model's default (:attr:`lenpen`)."""
        lenpen = self.lenpen if lenpen is None else lenpen
        encoded = self.encode_lines(lines, name, warn)
        results: list[TranslationResult] = [EMPTY for _ in lines]
        order = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: -len(encoded[i]))
        pad = self.source.pad_id
        start = 0
        while start < len(order):
            longest = len(encoded[order[start]])          # sorted longest first: the batch's width
            size = min(batch_size, max(1, (max_tokens or 1 << 62) // longest))
            batch = order[start:start + size]
            start += len(batch)
            src = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), longest, dtype=torch.bool)
            for row, i in enumerate(batch):
                src[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = True
            src, mask = src.to(self.device), mask.to(self.device)
            hyps: list[list[Hypothesis]]
            if beam == 1:
                hyps = greedy_search(self.model, src, mask, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b)
            else:
                hyps = beam_search(self.model, src, mask, beam_size=beam, lenpen=lenpen, nbest=nbest,
                                   max_len_a=max_len_a, max_len_b=max_len_b)
            for i, h in zip(batch, hyps):
                results[i] = TranslationResult([TranslationHypothesis(self.target.decode(x.tokens), x.score)
                                                for x in h])
            if progress is not None:
                progress.update(len(batch))
        return results
