"""nmt: a from-scratch PyTorch reference implementation of Imamura & Sumita (2019),
"Recycling a Pre-trained BERT Encoder for Neural Machine Translation".

Rooms, bottom to top (each imports only its own and lower ones; docs/design.md): ``errors``;
``files``, ``metrics``; ``text``, ``cpu``; ``model``; ``weights``; ``data``; ``decode``; ``train``.
The public API is loaded on first use, so ``import nmt`` stays cheap::

    from nmt import Translator
    Translator.from_checkpoint("checkpoints/demo-en-de").translate(["Click OK."])[0].text
"""
from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["Translator", "TranslationResult", "TranslationHypothesis", "ScoringResult", "NmtError", "__version__"]


def __getattr__(name: str):
    if name in ("Translator", "TranslationResult", "TranslationHypothesis", "ScoringResult"):
        from nmt.decode import translator
        return getattr(translator, name)
    if name == "NmtError":
        from nmt.errors import NmtError
        return NmtError
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
