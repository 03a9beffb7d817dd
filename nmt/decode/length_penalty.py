"""The length penalty: how a hypothesis's summed log-probability is normalised by its length.

Beam search, greedy search and sampling (nmt/decode/beam_search.py, nmt/decode/sampling.py) score a
finished hypothesis as fairseq does (``eos_scores /= (step + 1) ** len_penalty``): the sum of its
tokens' log-probabilities divided by ``len ** lenpen``, where ``len`` counts the generated tokens
INCLUDING the EOS. ``lenpen = 0`` ranks by the plain sum (short hypotheses win), ``1`` by the mean
per token, larger values favour longer hypotheses still. :func:`length_normalized` is the one place
this formula is written; which ``lenpen`` a model translates with by default is chosen on its dev
set after training (nmt/decode/lenpen_choice.py).
"""
from __future__ import annotations

DEFAULT_LENPEN = 1.0               # the paper's, and what a checkpoint without a dev-set choice decodes with


def length_normalized(score, length, lenpen: float):
    """``score / length ** lenpen``: a hypothesis's sum of log-probabilities over ``length`` tokens
    (EOS counted) as the searches rank it. ``score`` and ``length`` are numbers or tensors
    (elementwise).

    Worked example: "5 6" + EOS with p = .4 * .9 * 1 = .36, so sum(log p) = ln .36 = -1.0217, over
    3 tokens:

    >>> import math
    >>> [round(length_normalized(math.log(0.36), 3, lenpen), 4) for lenpen in (0.0, 1.0, 2.0)]
    [-1.0217, -0.3406, -0.1135]
    """
    return score / length ** lenpen

