"""Talking to a chat model: a session that keeps the history, streams each reply and stops at <|im_end|>.

Each turn's prompt is the whole conversation so far rendered with the chat template and the generation
prompt (`ChatFormat.encode(..., add_generation_prompt=True)`: tokenized as in fine-tuning), so the model
sees what it was trained on. When the history no longer fits model.max_seq_len with the reply budget, the
oldest turns are left out (the system prompt stays). A run dir fine-tuned with data.sft records its template
in config.json; `chat_format_for` reads it back.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Sequence

from yijax.data import chat
from yijax.errors import ConfigError
from yijax.eval.generate import Generator, Sampling

log = logging.getLogger(__name__)


def chat_format_for(ckpt: str, template: str | None = None) -> chat.ChatFormat:
  """The chat format a model was fine-tuned with (its run's config.json data.sft), or Yi's; `template`
  (a name or a Jinja string) replaces the template."""
  from yijax import paths
  from yijax.train import params_io

  location = params_io.locate_model(ckpt)
  model_dir = paths.parent(location.params_dir)
  fmt = chat.ChatFormat()
  for candidate in (paths.join(model_dir, "config.json"), paths.join(paths.parent(paths.parent(model_dir)), "config.json")):
    if paths.exists(candidate):
      try:
        sft = json.loads(paths.read_text(candidate)).get("data", {}).get("sft") or {}
      except (ValueError, AttributeError):
        continue
      if sft.get("enabled"):
        fmt = chat.ChatFormat(sft.get("template", "yi"), sft.get("end_of_turn", chat.IM_END),
                              bool(sft.get("add_bos", False)))
      break
  if template:
    fmt = chat.ChatFormat(template, fmt.end_of_turn, fmt.add_bos)
  return fmt


def stop_ids(tokenizer, fmt: chat.ChatFormat) -> list[int]:
  """The end-of-turn token (checked: a single token) and the tokenizer's eos."""
  ids = chat.check_tokenizer(tokenizer, fmt, field="--tokenizer")
  stops = [ids[fmt.end_of_turn]] if fmt.end_of_turn else []
  if tokenizer.eos_id >= 0 and tokenizer.eos_id not in stops:
    stops.append(tokenizer.eos_id)
  return stops


class IncrementalText:
  """Decodes a growing list of ids into text deltas (an incomplete UTF-8 byte sequence waits for the rest)."""

  def __init__(self, tokenizer):
    self.tokenizer, self.ids, self.text = tokenizer, [], ""

  def add(self, token: int) -> str:
    self.ids.append(int(token))
    text = self.tokenizer.decode(self.ids)
    if text.endswith("\ufffd"):
      return ""
    delta, self.text = text[len(self.text):], text
    return delta

  def finish(self) -> str:
    text = self.tokenizer.decode(self.ids)
    delta, self.text = text[len(self.text):], text
    return delta


class ChatSession:
  """A conversation with one model: `reply(user_text)` streams the answer and keeps both turns."""

  def __init__(self, model_config, params, tokenizer, fmt: chat.ChatFormat | None = None, system: str = "",
               max_new_tokens: int = 256, sampling: Sampling = Sampling(), seed: int = 0):
    self.config, self.tokenizer, self.fmt = model_config, tokenizer, fmt or chat.ChatFormat()
    self.generator = Generator(model_config, params)
    self.stops = stop_ids(tokenizer, self.fmt)
    self.max_new_tokens, self.sampling, self.seed = max_new_tokens, sampling.validate(), seed
    self.system = system
    self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
    self.turns = 0

  def reset(self) -> None:
    self.messages = [{"role": "system", "content": self.system}] if self.system else []

  def prompt_ids(self) -> list[int]:
    """The conversation so far with the generation prompt, its oldest turns left out until it fits."""
    budget = self.config.max_seq_len - self.max_new_tokens
    if budget < 1:
      raise ConfigError(f"--max_new_tokens={self.max_new_tokens} leaves no room for a prompt in the model's "
                        f"max_seq_len={self.config.max_seq_len}")
    head = 1 if self.messages and self.messages[0]["role"] == "system" else 0
    messages = list(self.messages)
    while True:
      ids, _ = self.fmt.encode(self.tokenizer, messages, add_generation_prompt=True)
      if len(ids) <= budget:
        return ids.tolist()
      if len(messages) - head <= 1:
        raise ConfigError(f"the message alone is {len(ids)} tokens, more than max_seq_len={self.config.max_seq_len} "
                          f"less --max_new_tokens={self.max_new_tokens}; shorten it")
      messages = messages[:head] + messages[head + 1:]
      log.info("chat: the oldest turn no longer fits the model's context and is left out")

  def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
    """Streams the model's answer to `user_text` (on_text gets each piece of text as it is decoded), ends
    at the end-of-turn token, and keeps both turns in the history."""
    self.messages.append({"role": "user", "content": user_text})
    prompt = self.prompt_ids()
    text = IncrementalText(self.tokenizer)
    for token in self.generator.stream(prompt, self.max_new_tokens, self.sampling, self.seed + self.turns,
                                       self.stops):
      if token in self.stops:
        break
      delta = text.add(token)
      if delta and on_text:
        on_text(delta)
    rest = text.finish()
    if rest and on_text:
      on_text(rest)
    self.turns += 1
    self.messages.append({"role": "assistant", "content": text.text})
    return text.text


def chat_prompts(tokenizer, fmt: chat.ChatFormat, user_texts: Sequence[str], system: str = "") -> list[list[int]]:
  """One single-turn chat prompt per text (`yijax generate --chat`)."""
  head = [{"role": "system", "content": system}] if system else []
  return [fmt.encode(tokenizer, head + [{"role": "user", "content": text}], add_generation_prompt=True)[0].tolist()
          for text in user_texts]
