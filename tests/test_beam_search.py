"""Beam search against oracles: exhaustive enumeration, greedy, one-sentence-at-a-time, full recompute;
n-gram blocking against brute force; sampling against the tables it samples from."""
import itertools
import math

import pytest
import torch

from nmt.cpu.inference_linear import prepare_for_inference
from nmt.decode.beam_search import (
    ban_repeated_ngrams,
    beam_search,
    greedy_search,
)
from nmt.decode.sampling import sample_search
from nmt.errors import TranslateError
from nmt.model.seq2seq import ModelSpec, build_model
from nmt.text.vocab import Vocab
from scripted_model import ScriptedModel

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


def tiny_model(seed=0, V=12):
    torch.manual_seed(seed)
    spec = ModelSpec.transformer("transformer-base", src_vocab_size=15, tgt_vocab_size=V, src_pad_id=0,
                                 embed_dim=16, num_heads=2, ffn_dim=32, num_layers=2)
    model = build_model(spec).eval()
    with torch.no_grad():   # sharper distributions than the init gives, so EOS is reached early
        model.decoder.output_projection.weight.mul_(6.0)
    return model


def sources(seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 2, 7, 3, 6]
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, 15, (n,), generator=g)
        src[i, n - 1] = Vocab.EOS
    return src, src.ne(0)


def full_logprob(model, src, mask, tokens):
    """sum log p(tokens + EOS) by one full forward pass (no cache)."""
    prev = torch.tensor([[Vocab.BOS] + tokens])
    target = torch.tensor(tokens + [Vocab.EOS])
    with torch.no_grad():
        lp = torch.log_softmax(model(src, mask, prev)[0].float(), -1)
    return lp.gather(1, target[:, None]).sum().item()


def test_the_module_docstrings_worked_example():
    # nmt/decode/beam_search.py: greedy commits to 4 (.6) and ends "4 6" (p .33); a beam of 2 finds
    # "5 6" (p .36); scores are ln p over 3 tokens (EOS counted)
    table = {(): {4: 0.6, 5: 0.4}, (4,): {6: 0.55, 7: 0.45}, (5,): {6: 0.9}}
    model = ScriptedModel(table, vocab_size=8)
    src, mask = torch.tensor([[9, 9]]), torch.tensor([[True, True]])
    assert greedy_search(model, src, mask)[0][0].tokens == [4, 6]
    best = beam_search(model, src, mask, beam_size=2, nbest=2)[0]
    assert [(h.tokens, round(h.score, 4)) for h in best] == [([5, 6], -0.3406), ([4, 6], -0.3696)]


def test_beam_one_equals_greedy():
    model = tiny_model()
    src, mask = sources()
    beam = beam_search(model, src, mask, beam_size=1, lenpen=1.0, max_len_b=8)
    greedy = greedy_search(model, src, mask, lenpen=1.0, max_len_b=8)
    assert [b[0].tokens for b in beam] == [g[0].tokens for g in greedy]
    assert [b[0].score for b in beam] == pytest.approx([g[0].score for g in greedy], abs=1e-5)


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_batched_equals_one_sentence_at_a_time(search):
    model = tiny_model()
    src, mask = sources()
    run = (lambda s, m: beam_search(model, s, m, beam_size=4, nbest=3, max_len_b=8)) if search == "beam" \
        else (lambda s, m: greedy_search(model, s, m, max_len_b=8))
    batched = run(src, mask)
    for i in range(src.size(0)):
        n = int(mask[i].sum())
        alone = run(src[i:i + 1, :n], mask[i:i + 1, :n])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-5)


def test_chunked_projection_gives_the_same_hypotheses():
    # one hypothesis row per projection chunk (chunk_bytes=1) vs the whole batch in one chunk
    model = tiny_model()
    src, mask = sources()
    one_chunk = beam_search(model, src, mask, beam_size=4, nbest=4, max_len_b=8)
    row_chunks = beam_search(model, src, mask, beam_size=4, nbest=4, max_len_b=8, chunk_bytes=1)
    assert [[h.tokens for h in hyps] for hyps in row_chunks] == [[h.tokens for h in hyps] for hyps in one_chunk]
    for a, b in zip(row_chunks, one_chunk):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_model_prepared_for_inference_gives_the_same_hypotheses(search):
    # translate.py's prepare_for_inference: every Linear (encoder and decoder) swapped for oneDNN's
    model, prepared = tiny_model(), tiny_model()
    prepare_for_inference(prepared)
    assert not any(isinstance(m, torch.nn.Linear) for m in prepared.modules())
    src, mask = sources()
    run = (lambda m: beam_search(m, src, mask, beam_size=4, nbest=4, max_len_b=8)) if search == "beam" \
        else (lambda m: greedy_search(m, src, mask, max_len_b=8))
    plain, fast = run(model), run(prepared)
    assert [[h.tokens for h in hyps] for hyps in fast] == [[h.tokens for h in hyps] for hyps in plain]
    for a, b in zip(fast, plain):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_cached_scores_equal_full_recompute():
    # every returned score is sum(log p) / (len + 1)^lenpen with log p from an uncached forward pass
    model = tiny_model()
    src, mask = sources()
    lenpen = 0.7
    results = beam_search(model, src, mask, beam_size=5, nbest=5, lenpen=lenpen, max_len_b=6)
    for i, hyps in enumerate(results):
        n = int(mask[i].sum())
        assert len(hyps) == 5 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            lp = full_logprob(model, src[i:i + 1, :n], mask[i:i + 1, :n], h.tokens)
            # float32 rounding: the cached step attends by two matmuls on CPU, the full pass by SDPA
            # (both ~2e-6 from float64); scores reach -15, hence a relative bound too
            assert h.score * (len(h.tokens) + 1) ** lenpen == pytest.approx(lp, rel=2e-6, abs=1e-5)


def random_table(V, max_len, seed):
    """A full next-token table over tokens 3..V-1 and EOS, every prefix up to max_len."""
    g = torch.Generator().manual_seed(seed)
    symbols = [Vocab.EOS] + list(range(3, V))
    table = {}
    for n in range(max_len + 1):
        for prefix in itertools.product(range(3, V), repeat=n):
            p = torch.rand(len(symbols), generator=g) ** 3      # peaky
            p = (p / p.sum()).tolist()
            table[prefix] = dict(zip(symbols, p))
    return table


def exhaustive(table, V, max_len, min_len, lenpen):
    """All sequences of min_len..max_len tokens (+EOS) scored like beam search, best first."""
    scored = []
    for n in range(min_len, max_len + 1):
        for seq in itertools.product(range(3, V), repeat=n):
            lp, prefix = 0.0, ()
            for tok in seq + (Vocab.EOS,):
                lp += math.log(table[prefix][tok]) if prefix in table else -math.inf
                prefix += (tok,)
            scored.append((lp / (n + 1) ** lenpen, list(seq)))
    return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("lenpen", [0.0, 0.5, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_finds_the_exhaustive_optimum(lenpen, early_stop, seed):
    V, max_len, min_len = 6, 3, 1          # tokens 3, 4, 5: 3 + 9 + 27 = 39 complete sequences
    table = random_table(V, max_len, seed)
    model = ScriptedModel(table, vocab_size=V)
    src, mask = torch.tensor([[7, 7]]), torch.tensor([[True, True]])
    hyps = beam_search(model, src, mask, beam_size=40, nbest=5, lenpen=lenpen, max_len_a=0, max_len_b=max_len,
                       min_len=min_len, early_stop=early_stop)[0]
    oracle = exhaustive(table, V, max_len, min_len, lenpen)
    assert hyps[0].tokens == oracle[0][1]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in oracle[:5]], abs=1e-5)


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_exact_stop_rule_never_worse_than_fairseq_rule(seed):
    V, max_len = 7, 4
    table = random_table(V, max_len, seed)
    model = ScriptedModel(table, vocab_size=V)
    src, mask = torch.tensor([[7]]), torch.tensor([[True]])
    oracle = exhaustive(table, V, max_len, 1, 1.0)[0]
    kw = dict(beam_size=3, lenpen=1.0, max_len_a=0, max_len_b=max_len)
    fairseq = beam_search(model, src, mask, early_stop=True, **kw)[0][0]
    exact = beam_search(model, src, mask, early_stop=False, **kw)[0][0]
    assert oracle[0] + 1e-5 >= exact.score >= fairseq.score - 1e-5


def test_length_limits_and_eos_counted_in_length():
    # EOS is most likely at once; min_len forbids it; max length forces it
    table = {(): {Vocab.EOS: 0.9, 4: 0.1}, (4,): {4: 0.99}, (4, 4): {4: 0.99}, (4, 4, 4): {4: 0.99}}
    model = ScriptedModel(table, vocab_size=6)
    src, mask = torch.tensor([[7, 7]]), torch.tensor([[True, True]])
    assert beam_search(model, src, mask, beam_size=2, min_len=0)[0][0].tokens == []
    h = beam_search(model, src, mask, beam_size=2, min_len=1, max_len_a=0, max_len_b=2)[0][0]
    assert h.tokens == [4, 4]
    # score = (log .1 + log .99 + log(EOS forced: the mass left over)) / 3
    assert h.score == pytest.approx((math.log(0.1) + math.log(0.99) + math.log(0.01 + 1e-12 * 0)) / 3, abs=1e-4)
    g = greedy_search(model, src, mask, min_len=2, max_len_a=0, max_len_b=5)[0][0]
    assert g.tokens == [4, 4, 4, 4] and len(g.tokens) <= 5


def test_bad_arguments():
    model = ScriptedModel({}, vocab_size=5)
    src, mask = torch.tensor([[7]]), torch.tensor([[True]])
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, src, mask, beam_size=2, nbest=3)


# ---------------------------------------------------------------- --no-repeat-ngram-size (fairseq's)

def repeats_ngram(seq, n):
    """Whether some n-gram occurs twice in seq (overlapping occurrences count, as in fairseq)."""
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


def greedy_reference(table, max_len, n, min_len=1):
    """Greedy search by hand: the likeliest token that does not repeat an n-gram (EOS when forced)."""
    prefix = ()
    while True:
        row = dict(table.get(prefix, {}))
        row[Vocab.EOS] = row.get(Vocab.EOS, 0.0) + max(0.0, 1.0 - sum(row.values()))
        allowed = {t: p for t, p in row.items() if not (n and repeats_ngram(prefix + (t,), n))}
        if len(prefix) < min_len:
            allowed.pop(Vocab.EOS, None)
        tok = Vocab.EOS if len(prefix) >= max_len else max(allowed, key=allowed.get)
        if tok == Vocab.EOS:
            return list(prefix)
        prefix += (tok,)


def test_no_repeat_ngram_steers_around_a_repeated_bigram():
    # the likeliest path is 4 5 4 5: with bigrams blocked, "4 5" may not come twice, so 4 5 4 6
    table = {(): {4: 0.9, 5: 0.1}, (4,): {5: 0.9, 4: 0.1}, (4, 5): {4: 0.9, 6: 0.1},
             (4, 5, 4): {5: 0.9, 6: 0.1}, (4, 5, 4, 5): {}, (4, 5, 4, 6): {}}
    model = ScriptedModel(table, vocab_size=8)
    src, mask = torch.tensor([[7, 7]]), torch.tensor([[True, True]])
    assert greedy_search(model, src, mask)[0][0].tokens == [4, 5, 4, 5]
    assert greedy_search(model, src, mask, no_repeat_ngram_size=2)[0][0].tokens == [4, 5, 4, 6]
    assert greedy_search(model, src, mask, no_repeat_ngram_size=3)[0][0].tokens == [4, 5, 4, 5]
    assert beam_search(model, src, mask, beam_size=3, early_stop=False)[0][0].tokens == [4, 5, 4, 5]
    h = beam_search(model, src, mask, beam_size=3, early_stop=False, no_repeat_ngram_size=2)[0][0]
    assert h.tokens == [4, 5, 4, 6]
    # the blocked token gets -inf, nothing is renormalized: the score is the table's log p
    assert h.score == pytest.approx((3 * math.log(0.9) + math.log(0.1)) / 5, abs=1e-6)
    # unigrams: no token twice, so after 4 5 the 6 (p .1) rather than 4
    assert greedy_search(model, src, mask, no_repeat_ngram_size=1)[0][0].tokens == [4, 5, 6]
    for n in (1, 2, 3):
        assert greedy_search(model, src, mask, no_repeat_ngram_size=n)[0][0].tokens == greedy_reference(table, 12, n)


def test_ban_repeated_ngrams_against_brute_force():
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 7, (50, 9), generator=g)                  # few symbols: many repeats
    for n in (1, 2, 3, 4):
        for t in range(prefix.size(1) + 1):
            lprobs = torch.zeros(50, 8)
            ban_repeated_ngrams(lprobs, prefix[:, :t], n)
            for row in range(50):
                seq = prefix[row, :t].tolist()
                seen = {tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}
                expected = [tok for tok in range(8) if t + 1 >= n and tuple((seq + [tok])[-n:]) in seen]
                assert torch.isinf(lprobs[row]).nonzero()[:, 0].tolist() == expected, (n, t, row)
    # a row whose only finite token would be blocked keeps it (EOS forbidden by min_len, a tiny vocabulary)
    lprobs = torch.full((2, 6), -math.inf)
    lprobs[:, 4] = -1.0
    lprobs[1, 5] = -2.0
    ban_repeated_ngrams(lprobs, torch.tensor([[4, 4], [4, 4]]), 1)
    assert lprobs[:, 4].tolist() == [-1.0, -math.inf] and lprobs[1, 5] == -2.0


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_repeat_ngram_against_brute_force(n, seed):
    V, max_len = 6, 4              # tokens 3, 4, 5: 120 sequences of 1-4 tokens, many with a repeated n-gram
    table = random_table(V, max_len, seed)
    model = ScriptedModel(table, vocab_size=V)
    src, mask = torch.tensor([[7, 7]]), torch.tensor([[True, True]])
    kw = dict(max_len_a=0, max_len_b=max_len, no_repeat_ngram_size=n)
    hyps = beam_search(model, src, mask, beam_size=130, nbest=5, lenpen=1.0, early_stop=False, **kw)[0]
    oracle = [(s, seq) for s, seq in exhaustive(table, V, max_len, 1, 1.0) if not repeats_ngram(seq, n)]
    assert [h.tokens for h in hyps] == [seq for _, seq in oracle[:5]]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in oracle[:5]], abs=1e-5)
    assert greedy_search(model, src, mask, **kw)[0][0].tokens == greedy_reference(table, max_len, n)
    beam1 = beam_search(model, src, mask, beam_size=1, **kw)[0][0]
    assert beam1.tokens == greedy_reference(table, max_len, n)


def test_no_repeat_ngram_on_a_model_keeps_batched_equal_to_alone():
    model = tiny_model()
    src, mask = sources()
    kw = dict(beam_size=4, nbest=4, max_len_b=12, no_repeat_ngram_size=2)
    batched = beam_search(model, src, mask, **kw)
    for i in range(src.size(0)):
        n = int(mask[i].sum())
        alone = beam_search(model, src[i:i + 1, :n], mask[i:i + 1, :n], **kw)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert not any(repeats_ngram(h.tokens, 2) for h in alone)
    plain = beam_search(model, src, mask, beam_size=4, nbest=4, max_len_b=12)
    assert any(repeats_ngram(h.tokens, 2) for hyps in plain for h in hyps)     # the option did something


# ---------------------------------------------------------------- sampling (fairseq's --sampling)

FIRST = {4: 0.5, 5: 0.3, 6: 0.15, 7: 0.05}       # step 0's table; every sample then ends (EOS)
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}          # chi-square critical values, p = 0.001


def first_token_counts(n, seed=0, **kw):
    model = ScriptedModel({(): FIRST}, vocab_size=8)
    src, mask = torch.tensor([[9, 9]]), torch.tensor([[True, True]])
    hyps = sample_search(model, src, mask, num_samples=n, generator=torch.Generator().manual_seed(seed), **kw)[0]
    assert len(hyps) == n and all(len(h.tokens) == 1 for h in hyps)       # EOS ends every sample
    counts = {}
    for h in hyps:
        counts[h.tokens[0]] = counts.get(h.tokens[0], 0) + 1
    return counts, hyps


def renormalized(table):
    total = sum(table.values())
    return {t: p / total for t, p in table.items()}


@pytest.mark.parametrize("options, expected", [
    ({}, FIRST),
    ({"sampling_topk": 2}, renormalized({4: 0.5, 5: 0.3})),
    ({"sampling_topk": 3}, renormalized({4: 0.5, 5: 0.3, 6: 0.15})),
    ({"sampling_topp": 0.7}, renormalized({4: 0.5, 5: 0.3})),                 # .5 < .7 <= .8
    ({"sampling_topp": 0.85}, renormalized({4: 0.5, 5: 0.3, 6: 0.15})),       # .8 < .85 <= .95
    ({"temperature": 0.5}, renormalized({t: p ** 2 for t, p in FIRST.items()})),
    ({"temperature": 2.0}, renormalized({t: p ** 0.5 for t, p in FIRST.items()})),
    ({"temperature": 2.0, "sampling_topk": 2}, renormalized({4: 0.5 ** 0.5, 5: 0.3 ** 0.5})),
])
def test_sample_frequencies_match_the_filtered_table(options, expected):
    n = 4000
    counts, _ = first_token_counts(n, **options)
    assert set(counts) <= set(expected)                                      # nothing outside the kept set
    chi2 = sum((counts.get(t, 0) - n * p) ** 2 / (n * p) for t, p in expected.items())
    assert chi2 < CHI2_999[len(expected) - 1], (counts, expected)


def test_the_sampling_modules_example():
    # nmt/decode/sampling.py: top-k 1 always draws the most probable token
    model = ScriptedModel({(): {4: 0.6, 5: 0.4}, (4,): {6: 0.9}, (5,): {6: 0.9}}, vocab_size=8)
    src, mask = torch.tensor([[9, 9]]), torch.tensor([[True, True]])
    hyps = sample_search(model, src, mask, num_samples=3, sampling_topk=1, generator=torch.Generator())[0]
    assert [h.tokens for h in hyps] == [[4, 6], [4, 6], [4, 6]]


def test_top_p_keeps_only_a_token_that_reaches_p_alone():
    counts, hyps = first_token_counts(300, sampling_topp=0.4)                # .5 >= .4: token 4 alone
    assert counts == {4: 300}
    # the score is the unfiltered log p (fairseq): log .5 + log p(EOS) = log .5, over 2 tokens
    assert hyps[0].score == pytest.approx(math.log(0.5) / 2, abs=1e-6)


def test_top_k_one_and_temperature_near_zero_equal_greedy():
    model = tiny_model()
    src, mask = sources()
    greedy = greedy_search(model, src, mask, max_len_b=8)
    for kw in ({"sampling_topk": 1}, {"temperature": 1e-4}, {"sampling_topp": 1e-6}):
        sampled = sample_search(model, src, mask, num_samples=3, max_len_b=8,
                                generator=torch.Generator().manual_seed(1), **kw)
        for g, s in zip(greedy, sampled):
            assert [h.tokens for h in s] == [g[0].tokens] * 3, kw
    top1 = sample_search(model, src, mask, sampling_topk=1, max_len_b=8, generator=torch.Generator())
    assert [h[0].score for h in top1] == pytest.approx([g[0].score for g in greedy], abs=1e-5)


def test_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    model = tiny_model()
    src, mask = sources()
    run = lambda seed: [[h.tokens for h in hyps] for hyps in sample_search(  # noqa: E731
        model, src, mask, num_samples=4, temperature=3.0, max_len_b=8, generator=torch.Generator().manual_seed(seed))]
    state = torch.get_rng_state()
    first = run(7)
    assert run(7) == first and run(8) != first
    assert torch.equal(torch.get_rng_state(), state)


def test_per_row_generators_make_samples_independent_of_the_batch():
    model = tiny_model()
    src, mask = sources()
    gens = lambda rows: [torch.Generator().manual_seed(100 + r) for r in rows]  # noqa: E731
    kw = dict(num_samples=2, temperature=3.0, max_len_b=8, no_repeat_ngram_size=2)
    batched = sample_search(model, src, mask, generator=gens(range(2 * src.size(0))), **kw)
    for i in range(src.size(0)):
        n = int(mask[i].sum())
        alone = sample_search(model, src[i:i + 1, :n], mask[i:i + 1, :n], generator=gens([2 * i, 2 * i + 1]), **kw)
        assert [h.tokens for h in alone[0]] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone[0]] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
        assert not any(repeats_ngram(h.tokens, 2) for h in alone[0])
    assert len({tuple(h.tokens) for hyps in batched for h in hyps}) > src.size(0)    # they do differ


def test_sampling_options_are_checked():
    model = ScriptedModel({}, vocab_size=5)
    src, mask = torch.tensor([[7]]), torch.tensor([[True]])
    for kw in ({"sampling_topk": 0}, {"sampling_topp": 0.0}, {"sampling_topp": 1.5}, {"temperature": 0.0},
               {"sampling_topk": 2, "sampling_topp": 0.5}):
        with pytest.raises(TranslateError):
            sample_search(model, src, mask, **kw)
