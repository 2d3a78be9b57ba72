"""Unit tier: the embedded text sources (`linker_nb.io.corpus`) and the evaluation helpers (`linker_nb.analyses.loss`).

Everything here is built locally (standard-library text, a byte-level tokenizer with no merges, a random
two-layer Llama), so the tests run offline in seconds (measured ~8 s on 2 idle cores).
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from linker_nb.analyses import loss as evaluation
from linker_nb.io import corpus


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level tokenizer without merges: one token per UTF-8 byte, so token counts are byte counts."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# ------------------------------------------------------------------------------------------------ corpus

def test_topic_split_is_disjoint_deterministic_and_about_ten_percent():
    topics = corpus.prose_topics()
    held = [k for k in topics if corpus.topic_split(k) == "heldout"]
    train = [k for k in topics if corpus.topic_split(k) == "train"]
    assert set(held).isdisjoint(train) and len(held) + len(train) == len(topics)
    assert 0.03 < len(held) / len(topics) < 0.2
    assert [corpus.topic_split(k) for k in topics] == [corpus.topic_split(k) for k in sorted(topics)]
    assert corpus.pretrain_text("train") == corpus.pretrain_text()
    assert corpus.heldout_text() == corpus.pretrain_text("heldout")


def test_heldout_topics_are_not_in_train_text():
    train = corpus.pretrain_text("train")
    for key, text in corpus.prose_topics().items():
        if corpus.topic_split(key) == "heldout":
            assert text not in train, key
            assert text in corpus.heldout_text()


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="heldout"):
        corpus.pretrain_text("test")


def test_code_text_is_capped_and_deterministic():
    code = corpus.code_text(max_bytes=50_000)
    assert 0 < len(code.encode("utf-8")) <= 50_000
    assert code.startswith("# file: ")
    assert code == corpus.code_text(max_bytes=50_000)
    assert "/test/" not in code and "# file: test/" not in corpus.code_text(max_bytes=400_000)


@pytest.mark.parametrize("kind", corpus.INSTRUCTION_KINDS)
def test_instruction_pairs_nonempty(kind):
    pairs = corpus.instruction_pairs(kind)
    assert len(pairs) >= 50
    assert all(prompt and answer.strip() for prompt, answer in pairs)
    assert pairs == corpus.instruction_pairs(kind)


def test_instruction_kinds_are_distinct_and_instruct_uses_train_topics_only():
    sets = {kind: corpus.instruction_pairs(kind) for kind in corpus.INSTRUCTION_KINDS}
    prompts = {kind: {p for p, _ in pairs} for kind, pairs in sets.items()}
    answers = {kind: {a for _, a in pairs} for kind, pairs in sets.items()}
    kinds = corpus.INSTRUCTION_KINDS
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            assert prompts[a].isdisjoint(prompts[b]), (a, b)
            assert len(answers[a] & answers[b]) < 0.05 * min(len(answers[a]), len(answers[b])), (a, b)
    held = [k for k in corpus.prose_topics() if corpus.topic_split(k) == "heldout"]
    assert not any(f"'{k}'" in p for p in prompts["instruct"] for k in held)


def test_unknown_instruction_kind_lists_kinds():
    with pytest.raises(ValueError, match="instruct.*chat.*qa"):
        corpus.instruction_pairs("dpo")


# ------------------------------------------------------------------------------------------------ evaluation

def test_eval_corpus_chunks_contiguous_text(byte_tokenizer):
    ev = evaluation.eval_corpus(byte_tokenizer, "embedded", n_sequences=5, seq_len=64)
    assert ev.tokens.shape == (5, 64) and ev.tokens.dtype == torch.long
    assert ev.n_tokens == 320 and ev.name == evaluation.EMBEDDED_NAME
    ids = byte_tokenizer(corpus.heldout_text(), add_special_tokens=False)["input_ids"]
    assert ev.tokens.reshape(-1).tolist() == ids[:320]


def test_eval_corpus_too_short_says_how_many_fit(byte_tokenizer):
    n_bytes = len(corpus.heldout_text().encode("utf-8"))
    with pytest.raises(ValueError, match=f"at most {n_bytes // 1000} sequences of 1000"):
        evaluation.eval_corpus(byte_tokenizer, "embedded", n_sequences=10_000, seq_len=1000)


def test_eval_corpus_auto_falls_back_offline_and_wikitext_explains(byte_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)     # `import datasets` now raises ImportError
    ev = evaluation.eval_corpus(byte_tokenizer, "auto", n_sequences=2, seq_len=16)
    assert ev.name == evaluation.EMBEDDED_NAME
    with pytest.raises(RuntimeError, match="datasets.*embedded"):
        evaluation.eval_corpus(byte_tokenizer, "wikitext2", n_sequences=2, seq_len=16)
    with pytest.raises(ValueError, match="unknown eval corpus"):
        evaluation.eval_corpus(byte_tokenizer, "c4")


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_lm_loss_matches_hand_cross_entropy(tiny_llama):
    tokens = torch.randint(0, 50, (5, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = tiny_llama(input_ids=tokens).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50), tokens[:, 1:].reshape(-1)).item()
    # batch_size 2 leaves a last batch of 1: the mean is over tokens, not an average of batch means
    assert evaluation.lm_loss(tiny_llama, tokens, batch_size=2) == pytest.approx(expected, rel=1e-6)


def test_next_token_predictions_are_argmax(tiny_llama):
    tokens = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(2))
    preds = evaluation.next_token_predictions(tiny_llama, tokens, batch_size=2)
    with torch.no_grad():
        expected = tiny_llama(input_ids=tokens).logits[:, :-1].argmax(-1)
    assert preds.shape == (3, 9) and torch.equal(preds, expected)
