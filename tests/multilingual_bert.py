"""A small multilingual-BERT-shaped model, built in the tests: the Hugging Face directory layout of
bert-base-multilingual-cased (config.json, vocab.txt, tokenizer_config.json, model.safetensors) at
tiny sizes and with random weights.

The vocabulary is laid out like mBERT's: ``[PAD]`` at id 0, ``[unused1]``..., ``[UNK]``, ``[CLS]``,
``[SEP]``, ``[MASK]``, then single characters of many scripts (ASCII, accented Latin including
Vietnamese, Arabic, CJK ideographs) each also as a ``##`` continuation, then whole words and
``##`` word pieces, cased (``Zürich`` and ``zürich`` are different entries). ``words``: extra text
(e.g. a training corpus) whose characters and most frequent words are added, so that text in it is
covered the way a real multilingual BERT covers its languages.

Used by tests/test_multilingual.py; ``python tests/multilingual_bert.py OUT_DIR`` writes one.
"""
from __future__ import annotations

import json
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from nmt.model.bert import BertConfig, expected_shapes
from nmt.weights.bert_names import NAMES
from nmt.weights.safetensors_io import save_safetensors

UNUSED = 20  # mBERT has 99 [unusedN] entries between [PAD] and [UNK]; a few keep the ids shifted

# Characters of the scripts the tests use: ASCII printable, Latin-1 and Vietnamese letters (both cases),
# Arabic letters, a few CJK ideographs and kana.
ASCII = [chr(c) for c in range(33, 127)]
LATIN = list("àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝ")
VIETNAMESE = list("ăđơưĂĐƠƯạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ"
                  "ẠẢẤẦẨẪẬẮẰẲẴẶẸẺẼẾỀỂỄỆỈỊỌỎỐỒỔỖỘỚỜỞỠỢỤỦỨỪỬỮỰỲỴỶỸ")
ARABIC = list("ءآأؤإئابةتثجحخدذرزسشصضطظعغفقكلمنهوىي")
CJK = list("中文字我你他是的在有人大学生国家日本東京北京上海猫狗好")
KANA = list("あいうえおかきくけこアイウエオカキクケコ")
WORDS = ["the", "The", "of", "and", "to", "is", "in", "I", "you", "world", "Hello", "hello",
         "un", "##aff", "##able", "##s", "##ing", "##ed", "Zürich", "zürich", "Straße", "straße", "über",
         "Über", "café", "cafe", "Café", "schön", "Grüße", "##ung", "Mädchen", "Haus", "##es",
         "Việt", "Nam", "Tôi", "tôi", "là", "người", "không", "có", "được", "những", "một", "và",
         "Nguyễn", "ờ", "ưu", "##ờ", "##ng", "##ời", "nhỏ", "nước", "viet", "nam", "toi", "la", "nguoi",
         "السلام", "عليكم", "##كم", "مرحبا", "كتاب", "##ات", "عربي", "😀", "🎉"]


def uncased(text: str) -> str:
    """Lower-cased, accents stripped: how an uncased vocabulary spells its entries."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def build_vocab(words: Iterable[str] = (), max_words: int = 2000, lower_case: bool = False) -> list[str]:
    """Entries in id order: mBERT's specials, characters and their ## forms, then words (lower-cased
    and without accents for an uncased vocabulary, as bert-base-multilingual-uncased's)."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, UNUSED)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [*ASCII, *LATIN, *VIETNAMESE, *ARABIC, *CJK, *KANA]
    counts: Counter = Counter()
    for line in words:
        # cased, NFC as written (mBERT's vocabulary holds composed characters)
        for word in line.split():
            chars += [c for c in word if not unicodedata.category(c).startswith(("C", "Z"))]
            counts[word.strip(".,!?;:\"'()")] += 1
    seen = set(vocab)
    out = list(vocab)

    def add(entry: str) -> None:
        if lower_case and not entry.startswith("[") and entry not in ("##", "#"):
            entry = entry[:2] + uncased(entry[2:]) if entry.startswith("##") else uncased(entry)
        if entry and entry not in seen and entry == entry.strip():
            seen.add(entry)
            out.append(entry)

    for char in chars:
        add(char)
    for char in chars:
        add("##" + char)
    for word in [*WORDS, *(w for w, _ in counts.most_common(max_words))]:
        add(word)
    return out


def build_multilingual_bert(directory, *, lower_case: bool = False, words: Iterable[str] = (),
                            tokenizer_config: dict | None = None, hidden: int = 32, layers: int = 2,
                            seed: int = 0) -> Path:
    """Write an mBERT-shaped HF directory; ``lower_case`` True gives the uncased variant
    (``do_lower_case: true`` as bert-base-multilingual-uncased). ``tokenizer_config``: written
    instead of the default ``{"do_lower_case": ...}`` (None keys are left out)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(words, lower_case=lower_case)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512, type_vocab_size=2)
    hf_config = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "pad_token_id": 0,
                 "position_embedding_type": "absolute", "directionality": "bidi", **config.to_dict()}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = tokenizer_config if tokenizer_config is not None else {"do_lower_case": lower_case}
    tok = {"tokenizer_class": "BertTokenizer", "model_max_length": 512,
           **{k: v for k, v in tok.items() if v is not None}}
    (directory / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n", encoding="utf-8")
    # random weights under Hugging Face's names, split per piece (query/key/value) as HF stores them
    shapes = expected_shapes(config, with_pooler=True)
    pieces = Counter(native for native, *_ in NAMES)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for native, _, _, hf in NAMES:
        for layer in range(layers) if "{}" in native else [None]:
            shape = list(shapes[native.format(layer)])
            shape[0] //= pieces[native]
            name = "bert." + (hf.format(layer) if layer is not None else hf)
            if "LayerNorm.weight" in name:
                tensors[name] = torch.ones(shape)
            elif name.endswith("bias"):
                tensors[name] = torch.zeros(shape)
            else:
                tensors[name] = torch.randn(shape, generator=generator) * 0.02
    tensors["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).unsqueeze(0)
    save_safetensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


if __name__ == "__main__":
    print(build_multilingual_bert(sys.argv[1]))
