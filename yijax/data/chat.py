"""Chat conversations: the chat template, and token ids with the mask of the tokens a model is trained on.

A conversation is the common `messages` list: [{"role": "system" | "user" | "assistant", "content": str}, ...].
It is rendered by a Jinja chat template exactly as transformers' `apply_chat_template` renders it (the same
sandboxed environment, trim_blocks and lstrip_blocks, `raise_exception`, bos/eos tokens in scope). The
default is the ChatML template of Yi's chat models (01-ai/Yi-6B-Chat, Yi-34B-Chat tokenizer_config.json):

  <|im_start|>system\\n{content}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n...

Trained tokens (Yi: the loss is on responses only) are each assistant turn's content and its end-of-turn
token (<|im_end|>), found from the template itself: turn i spans from the end of the rendering of messages[:i]
with the generation prompt to the end of the rendering of messages[:i+1], up to and including the last
end-of-turn string in it. The text is tokenized piece by piece at those boundaries, so a generation prompt
is tokenized the same way in training and in chat (`encode(..., add_generation_prompt=True)`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Sequence

import numpy as np

from yijax.errors import ConfigError, DataError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

# The chat_template of Yi's chat tokenizers (ChatML): every message as <|im_start|>ROLE\n CONTENT <|im_end|>\n,
# and <|im_start|>assistant\n as the generation prompt.
YI_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}")
TEMPLATES = {"yi": YI_TEMPLATE, "chatml": YI_TEMPLATE}


class ChatTokenError(ConfigError):
  """A tokenizer without the chat template's special tokens as single pieces."""


def template_text(template: str) -> str:
  """A template's Jinja source: a name in TEMPLATES, or a Jinja string as it is."""
  if template in TEMPLATES:
    return TEMPLATES[template]
  if "{{" not in template and "{%" not in template:
    raise ConfigError(f"chat template {template!r} is neither one of {sorted(TEMPLATES)} nor a Jinja string")
  return template


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
  """transformers' environment for chat templates (utils/chat_template_utils.py)."""
  from jinja2 import TemplateError, ext, sandbox

  def raise_exception(message):
    raise TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[ext.loopcontrols])
  env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(source)


def check_messages(messages: Any, where: str = "conversation") -> list[dict]:
  """The messages as plain dicts; an error names the first bad one."""
  if not isinstance(messages, list) or not messages:
    raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
      raise DataError(f"{where}: message {i} is {message!r}; each needs a role in {ROLES} and a string content")
    out.append({"role": message["role"], "content": message["content"]})
  return out


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """How conversations become text and tokens: the template, the end-of-turn string trained on (and
  generation stops at), bos/eos text the template may use, and whether a bos id leads every conversation."""

  template: str = "yi"
  end_of_turn: str = IM_END
  add_bos: bool = False
  bos_token: str = "<|startoftext|>"
  eos_token: str = "<|endoftext|>"

  @classmethod
  def from_config(cls, sft) -> "ChatFormat":
    return cls(template=sft.template, end_of_turn=sft.end_of_turn, add_bos=bool(sft.add_bos))

  def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The template's text (what apply_chat_template(tokenize=False) gives)."""
    return _compiled(template_text(self.template)).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
        eos_token=self.eos_token)

  def special_pieces(self) -> tuple[str, ...]:
    """Strings that must be single tokens: the ChatML markers the template uses and the end of turn."""
    source = template_text(self.template)
    pieces = [p for p in CHAT_TOKENS if p in source]
    if self.end_of_turn and self.end_of_turn not in pieces:
      pieces.append(self.end_of_turn)
    return tuple(pieces)

  def trained_spans(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(the conversation's text, [start, stop) character spans of every assistant turn's trained text)."""
    messages = list(messages)
    text = self.render(messages)
    spans = []
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      before = self.render(messages[:i], add_generation_prompt=True)
      through = self.render(messages[:i + 1])
      if not (through.startswith(before) and text.startswith(through)):
        raise ConfigError(f"chat template {self.template[:60]!r}: the rendering of the first {i} messages with "
                          "the generation prompt is not a prefix of the conversation's rendering, so the "
                          "assistant turns cannot be located; use a template that renders turn by turn")
      stop = len(through)
      if self.end_of_turn:
        at = through.rfind(self.end_of_turn, len(before))
        if at < 0:
          raise ConfigError(f"chat template: assistant turn {i} has no end of turn {self.end_of_turn!r} "
                            "(data.sft.end_of_turn); set it to the string the template ends a turn with")
        stop = at + len(self.end_of_turn)
      spans.append((len(before), stop))
    return text, spans

  def encode(self, tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False):
    """(token ids int32 [n], loss mask bool [n]: the tokens of every assistant turn's content and end of turn).
    With add_generation_prompt the ids end with the prompt of the next assistant turn (chat)."""
    messages = check_messages(list(messages)) if messages else []
    if add_generation_prompt:
      text, spans = self.render(messages, add_generation_prompt=True), []
    else:
      text, spans = self.trained_spans(messages)
    cuts = sorted({0, len(text), *[c for span in spans for c in span]})
    ids, mask = [], []
    if self.add_bos and tokenizer.bos_id >= 0:
      ids.append(tokenizer.bos_id)
      mask.append(False)
    for start, stop in zip(cuts[:-1], cuts[1:]):
      piece = tokenizer.encode(text[start:stop])
      ids += piece
      mask += [any(a <= start and stop <= b for a, b in spans)] * len(piece)
    return np.asarray(ids, np.int32), np.asarray(mask, bool)


def check_tokenizer(tokenizer, fmt: ChatFormat, field: str = "data.sft.tokenizer") -> dict[str, int]:
  """{piece: id} of the template's special strings; an error naming the fix when one is not a single token."""
  ids = {}
  for piece in fmt.special_pieces():
    encoded = tokenizer.encode(piece)
    if len(encoded) != 1:
      raise ChatTokenError(
          f"tokenizer {tokenizer.path} has no single token for {piece!r} (it encodes to {len(encoded)} pieces); "
          f"the chat template needs {', '.join(fmt.special_pieces())} as single tokens. Fix: `yijax tokenizer "
          f"add-chat-tokens --tokenizer={tokenizer.path} --out=DIR` (same vocabulary size, so the model still "
          f"fits) and set {field}=DIR" + ("" if field.startswith("--") else ", or set data.sft.add_chat_tokens=True")
          + ", or train a tokenizer with `yijax tokenizer train --chat_tokens ...`")
    ids[piece] = int(encoded[0])
  return ids


def read_conversations(path: str) -> list[list[dict]]:
  """The conversations of a JSONL file, one {"messages": [...]} object per line (blank lines skipped)."""
  from yijax import paths

  conversations = []
  for number, line in enumerate(paths.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{number}: not JSON ({e.msg})") from None
    if not isinstance(record, dict) or "messages" not in record:
      raise DataError(f"{path}:{number}: expected an object with 'messages' (the chat format)")
    conversations.append(check_messages(record["messages"], f"{path}:{number}"))
  if not conversations:
    raise DataError(f"{path} holds no conversation")
  return conversations
