"""Tiny offline components for the built-in test pipelines: a VAE config, and T5 / BERT text
encoders with tokenizers built in memory, and a CLIP tokenizer from a small word list (no download, no vocab file).

`transformers` is imported inside the builders: importing the adapters stays light. The in-memory
``T5Tokenizer(vocab=[(piece, score), ...])`` needs transformers >= 5 (tokenizers backend)."""
from __future__ import annotations

import os
import tempfile

# Small word list shared by the in-memory T5 (unigram) and BERT (wordpiece) tokenizers.
WORDS = (
    "a an the of on in at with and to by under over near from is are "
    "photo painting picture drawing video clip render sketch portrait "
    "cat dog bird fish horse car boat tree flower house city street sky sea "
    "beach mountain river forest field road bridge castle person man woman child "
    "red green blue yellow white black orange purple pink brown gray golden "
    "small big tiny large old new young happy sad bright dark sunny rainy "
    "running walking flying swimming sitting standing sleeping playing "
    "day night morning evening sunset sunrise winter summer spring autumn "
    "high quality detailed beautiful realistic cinematic slow motion camera"
).split()

# Tiny VAE: 4 blocks -> 8x spatial downsampling like the real SD VAE. Hunyuan's pipeline
# hard-codes `height // 8` when it builds the rotary embedding, so a 2-block VAE would
# desynchronise latents and RoPE; every family uses the same factor.
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=128,
)

TINY_T5 = dict(
    d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,  # sizes
    relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
    feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,  # token ids of the tiny vocabulary
)

TINY_BERT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,  # sizes
    max_position_embeddings=128,  # the Hunyuan pipeline pads BERT prompts to 77 tokens
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2, pad_token_id=0,
)

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"


def t5_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    vocab += [(ch, -5.0) for ch in _CHARS]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.model_max_length = 512
    return tok


def clip_tokenizer(max_length: int = 77):
    """A byte-level BPE `CLIPTokenizer` built in memory: every character alone (and word-final,
    ``c</w>``), plus left-to-right merges spelling every word of `WORDS` (a merge learned for a
    shorter word may split a longer one: every piece is in the vocabulary, none is unknown).
    <|startoftext|> is 0 and <|endoftext|> 1 (CLIP's pooler looks for the eos id, which must not be 2)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: dict[tuple[str, str], None] = {}  # ordered, without duplicates
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merges[left, right] = None
            left += right
            vocab.setdefault(left, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges))
    tok.model_max_length = max_length
    return tok


def bert_tokenizer():
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for w in WORDS + list(_CHARS):
        vocab.setdefault(w, len(vocab))
    try:
        tok = BertTokenizer(vocab=vocab)
    except TypeError:  # transformers < 5: slow tokenizer wants a vocab file
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "vocab.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(sorted(vocab, key=vocab.get)) + "\n")
            tok = BertTokenizer(vocab_file=path)
    tok.model_max_length = 512
    return tok


def tiny_t5(cfg: dict, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, **cfg)).eval().requires_grad_(False)


def tiny_bert(cfg: dict, vocab_size: int):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=vocab_size, **cfg)).eval().requires_grad_(False)
