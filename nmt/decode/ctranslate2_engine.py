"""Serving, part 2: translation through CTranslate2 with nmt's text processing around it.

:class:`CTranslate2Translator` has :class:`~nmt.decode.translator.Translator`'s shape --
``translate(lines, beam=..., lenpen=..., nbest=...)`` returning the same
:class:`~nmt.decode.translator.TranslationResult` objects -- over a directory written by
nmt/decode/ctranslate2_export.py. The lines go through the checkpoint's own pipelines (WordPiece or
BPE in, BPE removed and detokenized out), and the search is set up as nmt's beam search runs
(nmt/decode/beam_search.py):

- scores: the sum of log-probabilities over the tokens and the EOS, divided by ``length ** lenpen``
  with the EOS counted (``return_end_token``, which makes CTranslate2 count it; the EOS is dropped
  from the text); a sentence stops with ``beam`` finished hypotheses (``patience`` 1);
- length: nmt allows ``int(max_len_a * source ids + max_len_b)`` tokens per sentence, then forces the
  EOS. CTranslate2 takes one ``max_decoding_length`` per call, so each group of lines with the same
  limit is one call; hypotheses that reach it are rescored with the EOS (:meth:`search`);
- at least one token before the EOS (``min_decoding_length`` 1); PAD and BOS are never produced.

Where the two can still differ (docs/serving.md): CTranslate2 removes PAD and BOS before its
softmax, nmt after its log-softmax, so its log-probabilities are higher by -log(1 - their
probability), about 3e-5 per token for a trained model (the same for the EOS at the first step is
taken back from the scores, :meth:`CTranslate2Translator.end_at_limit`); when some of the ``beam``
best candidates end at the last allowed step, nmt keeps the next ones open for the forced EOS,
CTranslate2 does not; the decoder's LayerNorm epsilon (ctranslate2_export.py); float arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from nmt.decode.beam_search import max_lengths
from nmt.decode.ctranslate2_export import import_ctranslate2, read_pipelines_file
from nmt.decode.length_penalty import length_normalized
from nmt.decode.translator import (
    EMPTY,
    TranslationHypothesis,
    TranslationResult,
    check_search_options,
    encode_source_lines,
    length_sorted_batches,
    search_width,
)
from nmt.errors import TranslateError
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.text.vocab import Vocab

# CTranslate2's compute types (its get_supported_compute_types says which a device has)
COMPUTE_TYPES = ("default", "auto", "float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16", "float16", "bfloat16")


def ctranslate2_device(name: str) -> tuple[str, int]:
    """translate.py's --device as CTranslate2's (device, index): "cuda:1" -> ("cuda", 1).

    >>> ctranslate2_device("cuda:1"), ctranslate2_device("cpu")
    (('cuda', 1), ('cpu', 0))
    """
    kind, _, index = str(name).partition(":")
    if kind == "auto":
        kind = "cuda" if import_ctranslate2(TranslateError).get_cuda_device_count() else "cpu"
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise TranslateError(f"--device {name}: not a CTranslate2 device; use cpu, cuda or cuda:N")
    return kind, int(index or 0)


@dataclass
class CTranslate2Translator:
    translator: object                  # ctranslate2.Translator
    source: SourcePipeline
    target: TargetPipeline
    source_tokens: list[str]            # source id -> the token the exported vocabulary gives it
    max_source_len: int                 # longest source, in ids (the encoder's positions)
    max_target_positions: int           # the decoder's positions
    lenpen: float                       # the model's default length penalty

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu", compute_type: str = "default",
                 threads: int | None = None) -> "CTranslate2Translator":
        """Load an exported directory; ``compute_type``: CTranslate2's ("default": the type the
        weights were saved in), checked against what ``device`` supports; ``threads``: CPU threads
        per translation (None: as many as PyTorch uses, so OMP_NUM_THREADS sets both engines)."""
        ctranslate2 = import_ctranslate2(TranslateError)
        info = read_pipelines_file(path, TranslateError)
        kind, index = ctranslate2_device(device)
        try:
            supported = ctranslate2.get_supported_compute_types(kind, index)
        except RuntimeError as e:                # e.g. CUDA asked for on a machine without a usable one
            raise TranslateError(f"--device {device}: CTranslate2 cannot use it ({str(e)[:200]}); "
                                 f"use --device cpu") from None
        if compute_type not in COMPUTE_TYPES or compute_type not in supported | {"default", "auto"}:
            raise TranslateError(f"--compute-type {compute_type}: CTranslate2 {ctranslate2.__version__} on {kind} "
                                 f"supports {', '.join(sorted(supported))}")
        source = SourcePipeline.from_dict(info["source"], what=f"{path}: source")
        target = TargetPipeline.from_dict(info["target"], what=f"{path}: target")
        tokens = list(source.vocab_tokens)
        for i, token in info["source_renamed"].items():
            tokens[int(i)] = token
        try:
            translator = ctranslate2.Translator(str(path), device=kind, device_index=index,
                                                compute_type=compute_type,
                                                intra_threads=torch.get_num_threads() if threads is None else threads)
        except (RuntimeError, ValueError) as e:
            raise TranslateError(f"{path}: CTranslate2 cannot load it ({str(e)[:300]})") from None
        return cls(translator, source, target, tokens, int(info["max_source_len"]),
                   int(info["max_target_positions"]), float(info["lenpen"]))

    def encode_lines(self, lines: Sequence[str], name: str = "<input>",
                     warn: Callable[[str], None] = lambda msg: None, first_line: int = 1) -> list[list[int] | None]:
        """Source ids per line (nmt/decode/translator.py encode_source_lines, as nmt's engine)."""
        return encode_source_lines(self.source, lines, self.max_source_len, name, warn, first_line)

    def translate(self, lines: Sequence[str], *, beam: int | None = None, lenpen: float | None = None,
                  nbest: int = 1, batch_size: int = 64, max_tokens: int | None = 4000, max_len_a: float = 1.2,
                  max_len_b: int = 10, no_repeat_ngram_size: int = 0, sampling: bool = False,
                  sampling_topk: int | None = None, sampling_topp: float | None = None, temperature: float = 1.0,
                  seed: int | None = None, name: str = "<input>", first_line: int = 1,
                  warn: Callable[[str], None] = lambda m: None, progress=None) -> list[TranslationResult]:
        """As :meth:`Translator.translate`: one result per line, in input order, ``nbest`` hypotheses
        each (beam 1: greedy). Sampling is nmt's engine only (its per-line seeds have no counterpart)."""
        if sampling or sampling_topk is not None or sampling_topp is not None or temperature != 1.0 \
                or seed is not None:
            raise TranslateError("--sampling and its options are not available with --engine ctranslate2")
        check_search_options(beam=beam, nbest=nbest, no_repeat_ngram_size=no_repeat_ngram_size)
        width = search_width(beam, nbest, False)
        lenpen = self.lenpen if lenpen is None else lenpen
        # a length penalty of exactly 0 would switch CTranslate2 to another stopping rule; 1e-9 keeps nmt's
        # and changes no score (len ** 1e-9 is 1.0 in float32)
        options = dict(beam_size=width, length_penalty=lenpen or 1e-9, no_repeat_ngram_size=no_repeat_ngram_size,
                       return_scores=True, return_end_token=True, min_decoding_length=1, max_input_length=0,
                       suppress_sequences=[[Vocab.SPECIALS[Vocab.PAD]], [Vocab.SPECIALS[Vocab.BOS]]])
        encoded = self.encode_lines(lines, name, warn, first_line)
        results: list[TranslationResult] = [EMPTY for _ in lines]
        for batch in length_sorted_batches(encoded, batch_size, max_tokens):
            lengths = torch.tensor([len(encoded[i]) for i in batch])                        # [B]
            mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]              # [B,S]
            limits = max_lengths(mask, max_len_a, max_len_b, self.max_target_positions - 1)  # nmt's rule
            groups: dict[int, list[int]] = {}
            for i, limit in zip(batch, limits.tolist()):    # one CTranslate2 call per length limit
                groups.setdefault(limit, []).append(i)
            for limit, rows in groups.items():
                sources = [[self.source_tokens[t] for t in encoded[i]] for i in rows]
                try:
                    hyps = self.search(sources, limit, lenpen, options)
                except (RuntimeError, ValueError) as e:
                    raise TranslateError(f"{name}: CTranslate2 failed ({str(e)[:300]})") from None
                for i, h in zip(rows, hyps):
                    results[i] = TranslationResult([TranslationHypothesis(self.decode(t), s) for t, s in h[:nbest]])
            if progress is not None:
                progress.update(len(batch))
        return results

    def search(self, sources: list[list[str]], limit: int, lenpen: float,
               options: dict) -> list[list[tuple[list[str], float]]]:
        """Beam search for sentences of one length limit: per sentence, every hypothesis nmt's search
        finishes (tokens, score), best first.

        CTranslate2 returns at most ``num_hypotheses`` <= beam * patience of them, the best by its own
        scores, and at its last step (``limit`` tokens) it ends the ``beam`` best candidates whatever
        they are. A sentence that gets there has fewer than ``beam`` finished hypotheses before it
        (else the search would have stopped), so it runs again with patience 2 and twice the
        hypotheses -- the same search, now returning all of them -- and then, as nmt: if the candidates
        that end with an EOS at that step make ``beam`` finished hypotheses, the search stops there and
        the unfinished ones are dropped; otherwise they get the forced EOS (:meth:`end_at_limit`)."""
        width, eos = options["beam_size"], Vocab.SPECIALS[Vocab.EOS]

        def run(batch, patience):
            found = self.translator.translate_batch(batch, max_decoding_length=limit, patience=patience,
                                                    num_hypotheses=patience * width, **options)
            return [[(list(h), float(s)) for h, s in zip(r.hypotheses, r.scores)] for r in found]

        out = run(sources, 1)
        again = [b for b, hyps in enumerate(out) if width > 1 and any(not h or h[-1] != eos for h, _ in hyps)]
        for b, hyps in zip(again, run([sources[b] for b in again], 2) if again else []):
            ended = [(h, s) for h, s in hyps if h and h[-1] == eos]
            out[b] = ended if len(ended) >= width else hyps
        return self.end_at_limit(sources, out, lenpen)

    def end_at_limit(self, sources: list[list[str]], out: list[list[tuple[list[str], float]]],
                     lenpen: float) -> list[list[tuple[list[str], float]]]:
        """Per sentence, its hypotheses (tokens, score) with nmt's scores, best first. One CTranslate2 call
        (score_batch, which scores as nmt does: a log-softmax over the whole vocabulary, the EOS added)
        gives what they need:

        - a hypothesis that reached the length limit without an EOS gets one, as nmt's search forces it,
          and is scored: log-probabilities of its tokens and the EOS, summed, / (tokens + 1) ** lenpen;
        - the others lose what CTranslate2 added by removing the EOS from the first step's softmax
          (``min_decoding_length``), -log(1 - p(EOS first)), the same for every hypothesis of a
          sentence (so the search is unchanged) but not once divided by their lengths.
        """
        eos = Vocab.SPECIALS[Vocab.EOS]
        cut = [(b, k) for b, hyps in enumerate(out) for k, (h, _) in enumerate(hyps) if not h or h[-1] != eos]
        scored = self.translator.score_batch(sources + [sources[b] for b, _ in cut],
                                             [[] for _ in sources] + [out[b][k][0] for b, k in cut], max_input_length=0)
        for b, result in enumerate(scored[:len(sources)]):
            first = -math.log1p(-min(math.exp(result.log_probs[0]), 1 - 1e-7))   # CTranslate2's addition
            out[b] = [(h, s - length_normalized(first, len(h), lenpen)) for h, s in out[b]]
        for (b, k), result in zip(cut, scored[len(sources):]):
            tokens = out[b][k][0]
            out[b][k] = (tokens + [eos], length_normalized(sum(result.log_probs), len(tokens) + 1, lenpen))
        return [sorted(hyps, key=lambda item: -item[1]) for hyps in out]

    def decode(self, tokens: list[str]) -> str:
        """Text of a CTranslate2 hypothesis (target tokens, maybe ending with the EOS)."""
        index = self.target.vocab.index
        return self.target.decode([index.get(t, Vocab.UNK) for t in tokens])
