"""A CLIP tokenizer trained on the user's own captions.

Pretrained CLIP vocabularies cannot be downloaded here, so medfair trains a byte-level BPE on the
captions with the ``tokenizers`` package, using exactly the normaliser, pre-tokeniser and
end-of-word convention of CLIP, and writes ``vocab.json`` + ``merges.txt``: the files that
``transformers.CLIPTokenizer.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import DataError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = ["train_caption_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = (  # CLIP's pre-tokenisation pattern
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
    r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def train_caption_tokenizer(
    captions: Iterable[str],
    out: str | os.PathLike[str],
    *,
    vocab_size: int = 2000,
    max_length: int = 77,
) -> CLIPTokenizer:
    """Train a CLIP-compatible byte-level BPE on ``captions`` and save it to ``out``.

    Every byte appears in the vocabulary both inside and at the end of a word, so any text can
    be tokenised, words never seen included.

    Args:
        captions: Training text.
        out: Folder for ``vocab.json``, ``merges.txt`` and the tokenizer's own files.
        vocab_size: Upper bound on the vocabulary (a small corpus may need fewer).
        max_length: Token positions of the text encoder (saved as ``model_max_length``, which
            diffusers pipelines pad prompts to).

    Returns:
        The loaded ``transformers.CLIPTokenizer``.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    captions = [c for c in captions if c and c.strip()]
    if not captions:
        raise DataError("no captions to train a tokenizer on", param="data")
    tok = Tokenizer(
        models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix="", unk_token=EOS)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out))
    # Canonical ids: the trainer numbers single characters in hash-map order, which differs
    # between processes. Renumbering (special tokens, sorted characters with and without the
    # end-of-word mark, then merge results in merge order) keeps tokenisation identical and makes
    # the files, and so the models trained on them, reproducible.
    trained = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    chars = sorted(set(alphabet) | {t[:-4] for t in trained if t.endswith("</w>") and len(t) == 5})
    order = [BOS, EOS, *chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges)]
    order += sorted(set(trained) - set(order))
    vocab = {token: i for i, token in enumerate(dict.fromkeys(order))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(out), model_max_length=max_length)
    tokenizer.save_pretrained(str(out))
    return tokenizer
