"""Tiny models built from configs, with tokenizers trained on the fly (no hub access needed)."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def corpus(data_dir: Path) -> list[str]:
    texts = []
    for path in sorted(data_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.extend(v for v in row.values() if isinstance(v, str))
    return texts


def _tokenizer(texts: list[str], seq2seq: bool):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=SPECIALS))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    if seq2seq:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", ids["</s>"])])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
        ), ids
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ), ids


def build_tiny_bert(out: Path, texts: list[str]) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer, _ = _tokenizer(texts, seq2seq=False)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_bart(out: Path, texts: list[str]) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer, ids = _tokenizer(texts, seq2seq=True)
    cfg = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
        pad_token_id=ids["[PAD]"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        decoder_start_token_id=ids["</s>"], forced_eos_token_id=ids["</s>"],
    )
    BartForConditionalGeneration(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
