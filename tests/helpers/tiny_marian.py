"""Build a tiny, randomly initialised MarianMT model pair on disk (no hub, no download).

Used to run the real back-translation code path end to end in tests: a
SentencePiece model trained on synthetic captions, MarianTokenizer files
(source.spm, target.spm, vocab.json) and a one-layer Marian model with random
weights. Its "translations" are gibberish, but deterministic and dependent on
the input, which is what the tests check (plumbing, caching, alignment).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

COLOURS = ("red blue black white grey gray green yellow purple pink brown orange navy beige "
           "rouge bleu noir blanc gris vert jaune violet rose marron").split()
GARMENTS = ("jacket shirt t-shirt trousers pants skirt shoes backpack sneakers dress coat sweater jeans "
            "shorts handbag umbrella hat glasses veste chemise pantalon jupe chaussures sac robe manteau").split()
PEOPLE = "man woman girl boy lady person homme femme fille garcon personne".split()
VERBS = "wearing carrying holding walking with portant tenant marchant avec".split()


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """English-and-French-looking pedestrian captions (training text for SentencePiece)."""
    rng = random.Random(seed)
    return [
        f"The {rng.choice(PEOPLE)} is {rng.choice(VERBS)} a {rng.choice(COLOURS)} {rng.choice(GARMENTS)}, "
        f"{rng.choice(VERBS)} {rng.choice(COLOURS)} {rng.choice(GARMENTS)}."
        for _ in range(n)
    ]


def build_tiny_marian(out: Path, seed: int = 0, d_model: int = 32) -> Path:
    """Write a tokenizer + random MarianMTModel folder loadable by ``from_pretrained(out)``."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_captions(400, seed)), model_writer=buf, vocab_size=300,
        hard_vocab_limit=False, model_type="unigram", character_coverage=1.0, unk_id=0, eos_id=1,
        bos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}  # <unk>=0, </s>=1
    vocab["<pad>"] = len(vocab)
    (out / "source.spm").write_bytes(proto)
    (out / "target.spm").write_bytes(proto)
    (out / "vocab.json").write_text(json.dumps(vocab))
    MarianTokenizer(source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"),
                    vocab=str(out / "vocab.json"), model_max_length=64).save_pretrained(out)

    config = MarianConfig(
        vocab_size=len(vocab), d_model=d_model, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=64, pad_token_id=vocab["<pad>"],
        eos_token_id=1, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=1,
        # Large random weights make the output depend visibly on the input.
        init_std=0.5,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    # Random weights often predict </s> first; a minimum length keeps outputs non-empty.
    model.generation_config.min_new_tokens = 4
    model.save_pretrained(out)
    return out


def build_tiny_marian_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two different tiny models standing for en->fr and fr->en."""
    return build_tiny_marian(root / "en-fr", seed), build_tiny_marian(root / "fr-en", seed + 1)
