"""Our tokenizer gives transformers' token ids, raw and through the chat template."""

from __future__ import annotations

import pytest

from waferllm.model import ModelError, Tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand\n\nblank lines  ",
    "Numbers: 1234567890 3.14159 -42 1e-9 2024-06-01",
    "ünïcödé façade naïve — 日本語のテキスト 한국어 العربية",
    "emoji 🎉🚀 and zero\u200bwidth",
    "def f(x):\n    return {'a': x ** 2}  # comment\n",
    "<|im_start|>user\nhi<|im_end|>",
    "",
    "a" * 64,
]
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a prime > 10."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Translate 'chat' to 日本語"}],
]


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_tokenizer_matches_transformers(smollm, hf_tokenizer, text):
    tok = smollm[2]
    ids = tok.encode(text)
    assert ids == hf_tokenizer(text)["input_ids"]
    assert tok.decode(ids) == hf_tokenizer.decode(ids) == text


@pytest.mark.parametrize("messages", CHATS)
def test_chat_template_matches_transformers(smollm, hf_tokenizer, messages):
    tok = smollm[2]
    for gen in (True, False):
        text = tok.apply_chat_template(messages, add_generation_prompt=gen)
        assert text == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        want = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)["input_ids"]
        assert tok.encode_chat(messages, add_generation_prompt=gen) == list(want)


def test_special_ids(smollm):
    config, _, tok = smollm
    assert tok.bos_id == 1 and tok.eos_id == 2
    assert 2 in tok.eos_ids and set(config.eos_token_ids) <= set(tok.eos_ids)
    assert tok.vocab_size == config.vocab_size == 49152
    assert tok.id_to_token(1) == "<|im_start|>" and tok.token_to_id("<|im_end|>") == 2


def test_hf_folder_tokenizer_matches_transformers(hf_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    hf_tokenizer.save_pretrained(tmp_path)
    ours = Tokenizer.from_hf_folder(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"]
    for messages in CHATS:
        want = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert ours.encode_chat(messages) == list(want)
    assert ours.eos_id == theirs.eos_token_id and ours.bos_id == theirs.bos_token_id


def test_no_chat_template_is_a_clear_error(smollm):
    import dataclasses

    tok = dataclasses.replace(smollm[2], chat_template=None)
    with pytest.raises(ModelError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_unsupported_gguf_tokenizer_model():
    with pytest.raises(ModelError, match="supported: gpt2"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
