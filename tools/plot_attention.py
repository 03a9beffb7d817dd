#!/usr/bin/env python
"""Draw what the decoder reads from the encoder: the cross-attention of one translation as a heatmap.

    python tools/plot_attention.py --checkpoint checkpoints/demo-en-vi \\
        --source "Select the cells that you want to copy." --out attention.png
    python tools/plot_attention.py --checkpoint RUN/decoder/checkpoint_best.pt --source "..." --out a.png --layer all

The sentence is translated as translate.py does (beam search, the checkpoint's length penalty), then
the decoder runs once more, teacher-forced over BOS + that translation, and returns each layer's
cross-attention probabilities (``TransformerDecoder.cross_attention_weights``, nmt/model/decoder.py).
Row t is target token t (BPE, ``</s>`` last), column s source token s (WordPiece pieces with
[CLS]/[SEP] for the BERT systems, source BPE for the baselines); a cell is the attention averaged
over the heads. ``--layer L`` draws layer L (1-based; default: the last), ``--layer all`` one panel
per layer. matplotlib is needed only to draw (requirements-dev.txt). Bad input: ``error: ...`` on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nmt.decode.beam_search import beam_search, greedy_search
from nmt.decode.translator import Translator
from nmt.errors import NmtError, error_line
from nmt.files import atomic_write
from nmt.text.pretokenize import JOINER
from nmt.text.vocab import Vocab

SHOWN_JOINER = "\u25aa"   # ▪: the joiner mark ￭ (U+FFED) is not in matplotlib's default font


class AttentionPlotError(NmtError):
    """Bad input to the plot: a layer that does not exist, an empty sentence, no matplotlib."""


@dataclass
class AttentionMap:
    """One translation and its cross-attention, averaged over the heads."""
    sentence: str                  # the source sentence as given
    source: list[str]              # source tokens as the encoder saw them (S)
    target: list[str]              # target tokens as the decoder produced them, "</s>" last (T)
    translation: str               # the detokenized translation
    layers: list[torch.Tensor]     # per decoder layer [T,S], rows summing to 1


def parse_layer(text: str) -> int | str:
    """``--layer``: a 1-based layer number, "all" or "last" (the default); checked before any loading."""
    if text.strip().lower() in ("all", "last"):
        return text.strip().lower()
    try:
        layer = int(text)
    except ValueError:
        raise AttentionPlotError(f"--layer {text}: give a layer number (1 = the first), 'last' or 'all'") from None
    if layer < 1:
        raise AttentionPlotError(f"--layer {text}: layers are numbered from 1")
    return layer


def chosen_layers(layer: int | str, num_layers: int) -> list[int]:
    """0-based indexes of the layers to draw for a parsed ``--layer``."""
    if layer == "all":
        return list(range(num_layers))
    if layer == "last":
        return [num_layers - 1]
    if layer > num_layers:
        raise AttentionPlotError(f"--layer {layer}: the decoder has {num_layers} layers (1 to {num_layers})")
    return [layer - 1]


def require_matplotlib():
    """pyplot with a file-only backend, or an error that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise AttentionPlotError("matplotlib is not installed; it is needed only to draw: "
                                 "pip install -r requirements-dev.txt") from None
    matplotlib.use("Agg")              # files only, no display
    import matplotlib.pyplot as plt
    return plt


def attention_map(translator: Translator, source: str, beam: int = 10) -> AttentionMap:
    """Translate ``source`` (one sentence) and read the decoder's cross-attention over that translation."""
    ids = translator.encode_lines([source], name="--source",
                                  warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))[0]
    if ids is None:
        raise AttentionPlotError("--source is empty: give a sentence to translate")
    model, device = translator.model, translator.device
    src = torch.tensor([ids], device=device)
    mask = torch.ones_like(src, dtype=torch.bool)
    with torch.inference_mode():
        if beam == 1:
            hyp = greedy_search(model, src, mask, lenpen=translator.lenpen)[0][0]
        else:
            hyp = beam_search(model, src, mask, beam_size=beam, lenpen=translator.lenpen)[0][0]
        prev = torch.tensor([[Vocab.BOS, *hyp.tokens]], device=device)      # BOS y1 .. yn -> y1 .. yn EOS
        weights = model.decoder.cross_attention_weights(prev, model.encode(src, mask), mask)
    vocab = translator.source.vocab_tokens
    symbols = translator.target.vocab.symbols
    return AttentionMap(sentence=source, source=[vocab[i] for i in ids],
                        target=[symbols[i] for i in hyp.tokens] + [symbols[Vocab.EOS]],
                        translation=translator.target.decode(hyp.tokens),
                        layers=[w[0].mean(0).float().cpu() for w in weights])   # [h,T,S] -> [T,S]


def plot_attention(amap: AttentionMap, layers: Sequence[int], out: Path | str, title: str | None = None) -> Path:
    """Write the PNG: one heatmap per layer index in ``layers`` (0-based), target rows, source columns."""
    plt = require_matplotlib()
    out = Path(out)
    S, T = len(amap.source), len(amap.target)
    cols = min(len(layers), 3)
    rows = math.ceil(len(layers) / cols)
    panel_w, panel_h = max(3.0, 0.32 * S + 1.6), max(2.5, 0.28 * T + 1.4)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_w + 1.0, rows * panel_h + 0.8), squeeze=False)
    vmax = max(float(amap.layers[i].max()) for i in layers)
    for n, (ax, i) in enumerate(zip(axes.flat, layers)):
        image = ax.imshow(amap.layers[i].numpy(), cmap="Blues", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(S), amap.source, rotation=70, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(T), [t.replace(JOINER, SHOWN_JOINER) for t in amap.target], fontsize=8)
        ax.set_title(f"decoder layer {i + 1} of {len(amap.layers)}", fontsize=9)
        ax.set_xlabel("source tokens (what the encoder read)", fontsize=8)
        if n % cols == 0:
            ax.set_ylabel("target tokens (what the decoder wrote)", fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention (mean over heads)")
    fig.suptitle(title or f"{amap.sentence}\n→ {amap.translation}", fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a training checkpoint (.pt) or a run directory (its best model)")
    parser.add_argument("--source", required=True, help="the sentence to translate")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG", help="the image to write")
    parser.add_argument("--layer", default="last",
                        help="decoder layer to draw, 1-based, 'last' (the default) or 'all' (one panel each)")
    parser.add_argument("--beam", type=int, default=10, help="beam size; 1 = greedy (default: 10)")
    parser.add_argument("--title", help="a title instead of the source and its translation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        layer = parse_layer(args.layer)
        if args.beam < 1:
            raise AttentionPlotError(f"--beam {args.beam}: need 1 or more")
        require_matplotlib()                       # before the model is loaded
        translator = Translator.from_checkpoint(args.checkpoint)
        layers = chosen_layers(layer, len(translator.model.decoder.layers))
        amap = attention_map(translator, args.source, args.beam)
        print(f"{' '.join(amap.source)}\n-> {' '.join(amap.target)}\n   {amap.translation}")
        print(f"wrote {plot_attention(amap, layers, args.out, args.title)}")
    except (NmtError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
