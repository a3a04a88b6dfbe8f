"""Tokenizer: a Hugging Face `tokenizer.json` (via the `tokenizers` library) plus the model's chat template.

    tok = kj.Tokenizer.from_dir("Qwen3-8B/")
    ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], enable_thinking=True)
    text = tok.decode(generated_ids, skip_special_tokens=True)

The chat template comes from `chat_template.jinja` (transformers 5) or the "chat_template" field of
tokenizer_config.json, and is rendered the way transformers renders it: a sandboxed Jinja environment with
trim_blocks / lstrip_blocks, the `tojson` filter, `raise_exception` and `strftime_now`, and the special-token
strings as variables. The rendered text is encoded without adding special tokens.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

from kinetics_jax.checkpoint import shipped

_SPECIAL_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores a special token as a string or as an AddedToken dict with "content"."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _compile_template(source: str) -> jinja2.Template:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


class Tokenizer:
    """Encodes and decodes text and renders chats. `vocab_size` counts real tokens (added ones included); a
    model's embedding may have more rows (Qwen3: 151,936), which must never be sampled."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, chat_template: str | None = None,
                 special_tokens: dict[str, str] | None = None, eos_token_ids: Sequence[int] = ()):
        self._tokenizer = tokenizer
        self._chat_template_source = chat_template
        self._chat_template = None if chat_template is None else _compile_template(chat_template)
        self.special_tokens = dict(special_tokens or {})
        self.eos_token_ids = tuple(eos_token_ids)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """Reads tokenizer.json, tokenizer_config.json (special tokens, chat template), chat_template.jinja and
        generation_config.json (EOS ids) from a model or checkpoint directory, or a shipped checkpoint's name."""
        path = shipped.resolve(path)
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tokenizer_file):
            raise ValueError(f"no tokenizer.json in {path}")
        tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        special = {name: text for name in _SPECIAL_TOKEN_FIELDS
                   if (text := _token_text(config.get(name))) is not None}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.exists(jinja_file):
            with open(jinja_file) as f:
                template = f.read()
        eos = _read_json(os.path.join(path, "generation_config.json")).get("eos_token_id")
        if eos is None and "eos_token" in special:
            eos = tokenizer.token_to_id(special["eos_token"])
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(tokenizer, chat_template=template, special_tokens=special, eos_token_ids=eos_ids)

    @property
    def has_chat_template(self) -> bool:
        return self._chat_template is not None

    @property
    def vocab_size(self) -> int:
        """Number of real token ids (ids >= this are embedding padding)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in `text` map to their ids."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Ids -> text; with skip_special_tokens, special tokens (e.g. <|im_end|>) are dropped."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
                    enable_thinking: bool = True, **template_vars: Any) -> str:
        """The chat template rendered to text (what `apply_chat_template` encodes)."""
        if self._chat_template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)")
        if not messages:
            raise ValueError("messages is empty")
        return self._chat_template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                          enable_thinking=enable_thinking, **self.special_tokens, **template_vars)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
                            enable_thinking: bool = True, **template_vars: Any) -> list[int]:
        """Chat messages [{"role", "content"}, ...] -> prompt ids. enable_thinking=False asks Qwen3 templates for
        an empty <think></think> block (no reasoning); extra keyword arguments (e.g. tools) reach the template."""
        return self.encode(self.render_chat(messages, add_generation_prompt=add_generation_prompt,
                                            enable_thinking=enable_thinking, **template_vars))


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.path.basename(path)} is not valid JSON: {e}") from None
