"""Translation with a trained checkpoint: text lines in, text lines out (beam search, greedy or sampling).

:class:`Translator` holds a model and its two text pipelines. Lines are encoded, sorted by length
(longest first), translated in batches of at most ``batch_size`` sentences and ``max_tokens``
padded source tokens (nmt/decode/beam_search.py, nmt/decode/sampling.py), decoded (BPE removed,
detokenized) and returned in input order. Empty lines give empty translations; lines longer than
the encoder's positions are truncated with a warning naming the line. ``translate.py`` is the
command line over it (a stream translated buffer by buffer: ``first_line`` keeps line numbers and
sampling seeds those of the whole input); the trainer uses it for the dev BLEU after each epoch and
tools/run_experiments.py for the test sets.

Each line gives a :class:`TranslationResult` (as CTranslate2's ``translate_batch`` does): its
``text`` and ``score`` are the best hypothesis's, ``hypotheses`` the n-best list, best first::

    translator = Translator.from_checkpoint("checkpoints/demo-en-de")    # a run directory or a .pt
    result = translator.translate(["Click OK."])[0]
    result.text, result.score                  # ('Klicken Sie auf OK.', -0.41)   (for example)

:meth:`Translator.score` scores given translations instead (fairseq-generate's
``--score-reference``, CTranslate2's ``score_batch``): each target line goes through the training
target pipeline, is teacher-forced through the model, and gets the score the beam search gives a
hypothesis (:class:`ScoringResult`), so an n-best list can be rescored and references compared::

    translator.score(["Click OK."], ["Klicken Sie auf OK."])[0].score       # -0.41 (the same model)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.cpu.inference_linear import check_compute_type, prepare_for_translation
from nmt.decode.beam_search import Hypothesis, beam_search, greedy_search
from nmt.decode.length_penalty import DEFAULT_LENPEN, length_normalized
from nmt.decode.sampling import check_sampling_options, row_seed, sample_search
from nmt.errors import TranslateError
from nmt.model.logit_chunks import logit_chunk_rows
from nmt.model.seq2seq import Seq2Seq
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.text.vocab import Vocab
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


@dataclass(frozen=True)
class ScoringResult:
    """A given translation's score (as CTranslate2's ``score_batch`` gives it): ``score`` is what the
    beam search would give it as a hypothesis, sum(log_probs) / len(log_probs) ** lenpen."""
    tokens: list[str]           # target symbols (BPE) as the model reads them, "</s>" last
    log_probs: list[float]      # log p of each of ``tokens`` given the source and the tokens before it
    score: float                # length-normalised sum of ``log_probs`` (nmt/decode/length_penalty.py)


EMPTY = TranslationResult([TranslationHypothesis("", 0.0)])
EMPTY_SCORE = ScoringResult([], [], 0.0)        # an empty source with an empty target, as translate gives it
DEFAULT_BEAM = 10                       # the paper's beam size


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
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", compute_type: str = "float32",
                        int8: bool = False, bert: str | Path | None = None) -> "Translator":
        """Load for decoding: every Linear swapped for a faster inference kernel of ``compute_type``
        (as CTranslate2 names them: float32, oneDNN-packed on the CPU; bfloat16; int8, the decoder's
        layers, CPU only; nmt/cpu/inference_linear.py). ``int8=True`` is ``compute_type="int8"``. The
        default length penalty is the checkpoint's dev-set choice (nmt/decode/lenpen_choice.py), else 1.0.
        A stage-1 checkpoint holds no BERT weights: they are read from ``bert`` if given, else from the
        BERT file it records (its sha256 checked; nmt/weights/checkpoint.py attach_bert)."""
        device = translation_device(device)
        compute_type = "int8" if int8 else compute_type
        try:
            check_compute_type(compute_type, device)         # before the checkpoint is read
        except ValueError as e:
            raise TranslateError(f"--compute-type {compute_type}: {e}") from None
        path = resolve_checkpoint(path)
        ckpt = load_checkpoint(path, bert=bert)     # checks it has model_spec, model, source and target
        source = SourcePipeline.from_dict(ckpt["source"], what=f"{path}: source")
        target = TargetPipeline.from_dict(ckpt["target"], what=f"{path}: target")
        model, spec = model_from_checkpoint(ckpt, path)
        if len(source.vocab_tokens) != spec.src_vocab_size or len(target.vocab) != spec.tgt_vocab_size:
            raise TranslateError(f"{path}: vocabulary sizes (source {len(source.vocab_tokens)}, target "
                                 f"{len(target.vocab)}) do not match the model ({spec.src_vocab_size}, "
                                 f"{spec.tgt_vocab_size})")
        try:
            model = prepare_for_translation(model.to(device), compute_type)
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
                     warn: Callable[[str], None] = lambda msg: None, first_line: int = 1) -> list[list[int] | None]:
        """Source ids per line (:func:`encode_source_lines`, up to :attr:`max_source_len`)."""
        return encode_source_lines(self.source, lines, self.max_source_len, name, warn, first_line)

    def translate(self, lines: Sequence[str], *, beam: int | None = None, lenpen: float | None = None,
                  nbest: int = 1, batch_size: int = 64, max_tokens: int | None = 4000, max_len_a: float = 1.2,
                  max_len_b: int = 10, no_repeat_ngram_size: int = 0, sampling: bool = False,
                  sampling_topk: int | None = None, sampling_topp: float | None = None, temperature: float = 1.0,
                  seed: int | None = None, name: str = "<input>", first_line: int = 1,
                  warn: Callable[[str], None] = lambda m: None, progress=None) -> list[TranslationResult]:
        """One result per line, in input order, with ``nbest`` hypotheses; an empty line gives an
        empty translation with score 0. ``lenpen``: None for the model's default (:attr:`lenpen`).

        ``beam``: the beam size (None: 10; 1: greedy search). ``sampling``: draw ``beam`` samples per
        line instead (None: ``nbest``), with ``sampling_topk`` / ``sampling_topp`` / ``temperature``
        (nmt/decode/sampling.py); ``seed`` makes them reproducible: each line's samples are seeded by
        ``seed`` and the line's number, so they do not depend on batching. ``first_line``: the number
        of ``lines[0]`` in the whole input (a stream translated in parts), for warnings and seeds.
        ``no_repeat_ngram_size``: no hypothesis repeats an n-gram of target tokens (0: off).
        """
        lenpen = self.lenpen if lenpen is None else lenpen
        search = self.searcher(beam=beam, nbest=nbest, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b,
                               no_repeat_ngram_size=no_repeat_ngram_size, sampling=sampling,
                               sampling_topk=sampling_topk, sampling_topp=sampling_topp, temperature=temperature,
                               seed=seed)
        encoded = self.encode_lines(lines, name, warn, first_line)
        results: list[TranslationResult] = [EMPTY for _ in lines]
        for batch in length_sorted_batches(encoded, batch_size, max_tokens):
            src, mask = self.source_batch([encoded[i] for i in batch])
            hyps = search(src, mask, [first_line + i for i in batch])
            for i, h in zip(batch, hyps):
                results[i] = TranslationResult([TranslationHypothesis(self.target.decode(x.tokens), x.score)
                                                for x in h[:nbest]])
            if progress is not None:
                progress.update(len(batch))
        return results

    def score(self, sources: Sequence[str], targets: Sequence[str], *, lenpen: float | None = None,
              batch_size: int = 64, max_tokens: int | None = 4000, name: str = "<input>",
              target_name: str = "<targets>", first_line: int = 1, warn: Callable[[str], None] = lambda m: None,
              progress=None) -> list[ScoringResult]:
        """One :class:`ScoringResult` per (source, target) pair, in input order: the target, encoded by
        the training target pipeline with EOS appended, teacher-forced through the model, and scored
        as the beam search scores a hypothesis. ``lenpen``: None for the model's default (:attr:`lenpen`).

        Sources are encoded, truncated (with a warning) and batched as :meth:`translate` does it; the
        search limits (``max_len_a``/``b``, the shortest hypothesis) do not apply: an empty target is
        scored as EOS alone. An empty source gives score 0 with an empty target (translate's empty
        translation); a non-empty target for it, or one longer than the decoder's positions, is a
        TranslateError naming the line. A translation :meth:`translate` wrote gets back its score when
        its text encodes to the tokens it was written from (not so for ``<unk>`` or a word cut off
        at the length limit).
        """
        if len(sources) != len(targets):
            raise TranslateError(f"line counts differ: {name} has {len(sources)} lines, {target_name} has "
                                 f"{len(targets)}; scoring needs one target line per source line")
        lenpen = self.lenpen if lenpen is None else lenpen
        encoded = self.encode_lines(sources, name, warn, first_line)
        target_ids = self.encode_targets(targets, encoded, name, target_name, first_line)
        symbols = self.target.vocab.symbols
        results: list[ScoringResult] = [EMPTY_SCORE for _ in sources]
        for batch in length_sorted_batches(encoded, batch_size, max_tokens):
            src, mask = self.source_batch([encoded[i] for i in batch])
            for i, log_probs in zip(batch, teacher_forced_log_probs(self.model, src, mask,
                                                                    [target_ids[i] for i in batch])):
                tokens = [symbols[t] for t in target_ids[i]] + [symbols[Vocab.EOS]]
                results[i] = ScoringResult(tokens, log_probs,
                                           float(length_normalized(math.fsum(log_probs), len(log_probs), lenpen)))
            if progress is not None:
                progress.update(len(batch))
        return results

    def encode_targets(self, targets: Sequence[str], encoded_sources: Sequence[list[int] | None], name: str,
                       target_name: str, first_line: int = 1) -> list[list[int] | None]:
        """Target ids per line (without BOS/EOS), None where the source is empty; TranslateError for a
        target the beam search could not write: one for an empty source, or too long for the decoder."""
        positions = int(self.model.decoder.max_positions)
        out: list[list[int] | None] = []
        for number, (line, source) in enumerate(zip(targets, encoded_sources), first_line):
            if source is None:
                if line.strip():
                    raise TranslateError(f"{name}:{number} is empty but {target_name}:{number} is not: an empty "
                                         f"line translates to an empty line, so only an empty target can be scored")
                out.append(None)
                continue
            ids = self.target.encode(line)
            if len(ids) >= positions:
                raise TranslateError(f"{target_name}:{number}: {len(ids)} target tokens, more than the "
                                     f"{positions - 1} the decoder can read after BOS ({positions} positions); "
                                     f"shorten or split the line")
            out.append(ids)
        return out

    def source_batch(self, encoded: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded source ids and mask [B,S] of encoded lines, on the translator's device."""
        longest = max(len(ids) for ids in encoded)
        src = torch.full((len(encoded), longest), self.source.pad_id, dtype=torch.long)
        mask = torch.zeros(len(encoded), longest, dtype=torch.bool)
        for row, ids in enumerate(encoded):
            src[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = True
        return src.to(self.device), mask.to(self.device)

    def searcher(self, *, beam: int | None, nbest: int, lenpen: float, max_len_a: float, max_len_b: int,
                 no_repeat_ngram_size: int, sampling: bool, sampling_topk: int | None, sampling_topp: float | None,
                 temperature: float, seed: int | None) -> Callable[[Tensor, Tensor, list[int]], list[list[Hypothesis]]]:
        """The search :meth:`translate` runs: (src, mask, the lines' numbers) -> hypotheses per line.
        Checks the options first (TranslateError)."""
        check_search_options(beam=beam, nbest=nbest, no_repeat_ngram_size=no_repeat_ngram_size, sampling=sampling,
                             sampling_topk=sampling_topk, sampling_topp=sampling_topp, temperature=temperature,
                             seed=seed)
        limits = dict(lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b,
                      no_repeat_ngram_size=no_repeat_ngram_size)
        model, device, width = self.model, self.device, search_width(beam, nbest, sampling)
        if not sampling and width == 1:
            return lambda src, mask, numbers: greedy_search(model, src, mask, **limits)
        if not sampling:
            return lambda src, mask, numbers: beam_search(model, src, mask, beam_size=width, nbest=nbest, **limits)
        if seed is None:
            seed = torch.Generator().seed()             # a fresh random seed, global RNG untouched

        def run(src: Tensor, mask: Tensor, numbers: list[int]) -> list[list[Hypothesis]]:
            generators = [torch.Generator(device=device).manual_seed(row_seed(seed, n, j))
                          for n in numbers for j in range(width)]
            return sample_search(model, src, mask, num_samples=width, sampling_topk=sampling_topk,
                                 sampling_topp=sampling_topp, temperature=temperature, generator=generators, **limits)
        return run


@torch.no_grad()
def teacher_forced_log_probs(model, src_ids: Tensor, src_mask: Tensor, targets: Sequence[list[int]],
                             chunk_bytes: int | None = None) -> list[list[float]]:
    """Per sentence, the log-probability of each target token and then of EOS, given the source and
    the tokens before it: the decoder reads BOS + the target at once (teacher forcing, as in
    training), and each row is a log-softmax over the float32 logits, as the searches compute it.
    src_ids, src_mask [B,S]; ``targets``: B lists of target ids without BOS/EOS. The output
    projection runs over row chunks (``chunk_bytes``, nmt/model/logit_chunks.py), padding skipped.
    """
    device, lengths = src_ids.device, torch.tensor([len(ids) + 1 for ids in targets])      # [B], EOS counted
    prev = torch.full((len(targets), int(lengths.max())), Vocab.PAD, dtype=torch.long)     # [B,T]: BOS + y
    gold = torch.full_like(prev, Vocab.PAD)                                                # [B,T]: y + EOS
    for row, ids in enumerate(targets):
        prev[row, :len(ids) + 1] = torch.tensor([Vocab.BOS, *ids], dtype=torch.long)
        gold[row, :len(ids) + 1] = torch.tensor([*ids, Vocab.EOS], dtype=torch.long)
    real = (torch.arange(prev.size(1))[None, :] < lengths[:, None]).to(device)             # [B,T]
    prev, gold = prev.to(device), gold.to(device)
    hidden = model.decoder.features(prev, model.encode(src_ids, src_mask), src_mask)[real]   # [N,H], row-major
    want = gold[real]                                                                       # [N]
    step = logit_chunk_rows(model.decoder.vocab_size, device, chunk_bytes)
    picked = [F.log_softmax(model.decoder.output_projection(hidden[i:i + step]).float(), dim=-1)
              .gather(1, want[i:i + step, None])[:, 0] for i in range(0, want.numel(), step)]
    flat = torch.cat(picked).double().cpu().tolist()
    ends = lengths.cumsum(0).tolist()
    return [flat[end - n:end] for end, n in zip(ends, lengths.tolist())]


def encode_source_lines(source: SourcePipeline, lines: Sequence[str], limit: int, name: str = "<input>",
                        warn: Callable[[str], None] = lambda msg: None, first_line: int = 1) -> list[list[int] | None]:
    """Source ids per line; None for an empty line. Lines over ``limit`` tokens (the encoder's
    positions) are truncated with a warning naming the line by its number in the input,
    ``lines[0]`` being number ``first_line``. Shared by both engines (nmt's and CTranslate2's)."""
    out: list[list[int] | None] = []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            out.append(None)
            continue
        ids = source.encode(line)
        if len(ids) > limit:
            warn(f"{name}:{number}: {len(ids)} source tokens, more than the encoder's {limit} positions; truncated")
            ids = source.encode(line, max_length=limit)
        out.append(ids)
    return out


def search_width(beam: int | None, nbest: int, sampling: bool) -> int:
    """The beam size, or with ``sampling`` the samples per line: ``beam``, else 10 (the paper's beam),
    or ``nbest`` samples (one per line unless more are asked for, as fairseq's ``--sampling --beam N``)."""
    if beam is not None:
        return beam
    return nbest if sampling else DEFAULT_BEAM


def check_search_options(*, beam: int | None, nbest: int, no_repeat_ngram_size: int = 0, sampling: bool = False,
                         sampling_topk: int | None = None, sampling_topp: float | None = None,
                         temperature: float = 1.0, seed: int | None = None) -> None:
    """TranslateError, naming translate.py's flags, for options :meth:`Translator.translate` cannot use."""
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) \
            or no_repeat_ngram_size < 0:
        raise TranslateError(f"--no-repeat-ngram-size {no_repeat_ngram_size}: must be a whole number >= 0")
    width = search_width(beam, nbest, sampling)
    what = "--beam (samples per line with --sampling)" if sampling else "--beam"
    if width < 1 or not 1 <= nbest <= width:
        raise TranslateError(f"need {what} >= 1 and 1 <= --nbest <= {what.split()[0]} (got {width}, {nbest})")
    if sampling:
        check_sampling_options(sampling_topk, sampling_topp, temperature)
    elif sampling_topk is not None or sampling_topp is not None or temperature != 1.0 or seed is not None:
        raise TranslateError("--sampling-topk, --sampling-topp, --temperature and --seed need --sampling")


def length_sorted_batches(encoded: Sequence[list[int] | None], batch_size: int,
                          max_tokens: int | None) -> Iterator[list[int]]:
    """Indices of the non-empty lines in batches, longest first: at most ``batch_size`` lines and
    ``max_tokens`` padded source tokens (at least one line) each.

    >>> list(length_sorted_batches([[1] * 3, None, [1] * 5, [1]], batch_size=2, max_tokens=None))
    [[2, 0], [3]]
    """
    order = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: -len(encoded[i]))
    start = 0
    while start < len(order):
        longest = len(encoded[order[start]])          # sorted longest first: the batch's width
        size = min(batch_size, max(1, (max_tokens or 1 << 62) // longest))
        yield order[start:start + size]
        start += size
