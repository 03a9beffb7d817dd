"""Beam search against oracles: exhaustive enumeration, greedy, one-sentence-at-a-time, full recompute."""
import itertools
import math

import pytest
import torch

from nmt.cpu.inference_linear import prepare_for_inference
from nmt.decode.beam_search import ScriptedModel, beam_search, greedy_search
from nmt.model.seq2seq import ModelSpec, build_model
from nmt.text.vocab import Vocab

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
