"""A stand-in model for the decoding tests: next-token probabilities from a fixed table.

The searches (nmt/decode/beam_search.py, nmt/decode/sampling.py) need only ``encode`` and a decoder
with ``init_state``, ``step``/``step_features``, ``output_projection`` and ``reorder_state``; a table
makes every hypothesis's probability known, so results can be checked against exhaustive
enumeration and by hand.
"""
import torch

from nmt.text.vocab import Vocab


class ScriptedModel:
    """A fake model for tests: next-token probabilities from a fixed table.

    ``table`` maps a prefix (tuple of generated ids, no BOS) to {token: probability}; missing
    prefixes, and missing mass, go to EOS. The source is ignored except for its length.
    """

    class _Decoder:
        max_positions = 1 << 20

        def __init__(self, table, vocab_size):
            self.table, self.vocab_size = table, vocab_size

        def init_state(self, encoder_out, src_mask):
            return {"prefixes": [() for _ in range(encoder_out.size(0))], "length": 0}

        def output_projection(self, x):          # step_features already gives log-probs
            return x

        def step(self, prev_token, state):
            return self.step_features(prev_token, state)

        def step_features(self, prev_token, state):
            prefixes = state["prefixes"]
            if state["length"] > 0:
                prefixes = [p + (int(t),) for p, t in zip(prefixes, prev_token)]
            state["prefixes"], state["length"] = prefixes, state["length"] + 1
            probs = torch.full((len(prefixes), self.vocab_size), 1e-12)
            for i, p in enumerate(prefixes):
                row = self.table.get(p, {})
                for tok, pr in row.items():
                    probs[i, tok] = pr
                probs[i, Vocab.EOS] += max(0.0, 1.0 - sum(row.values()))
            return probs.log()

        def reorder_state(self, state, new_order, source_order=None):
            state["prefixes"] = [state["prefixes"][i] for i in new_order.tolist()]
            return state

    def __init__(self, table: dict, vocab_size: int):
        self.decoder = self._Decoder(table, vocab_size)

    def encode(self, src_ids, src_mask):
        return torch.zeros(src_ids.size(0), src_ids.size(1), 1)
