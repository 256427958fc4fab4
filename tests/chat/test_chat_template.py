"""The chat template (Yi's ChatML, or any Jinja string) against transformers, and the loss mask it gives."""

import numpy as np
import pytest

from yijax.data import chat

SYSTEM_MULTI_TURN = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "3 plus 4 is 7."},
    {"role": "user", "content": "And plus 2?\nShow it."},
    {"role": "assistant", "content": "7 plus 2 is 9.\n  Done."},
]
NO_SYSTEM = SYSTEM_MULTI_TURN[1:3]


@pytest.mark.parametrize("messages", [SYSTEM_MULTI_TURN, NO_SYSTEM, SYSTEM_MULTI_TURN[:2], SYSTEM_MULTI_TURN[:4]])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_yi_template_equals_transformers_apply_chat_template(hf_chat_tokenizer, messages, generation_prompt):
  expected = hf_chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
  assert chat.ChatFormat().render(messages, add_generation_prompt=generation_prompt) == expected


def test_yi_template_text():
  assert chat.ChatFormat().render(SYSTEM_MULTI_TURN[:3], add_generation_prompt=False) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n"
      "<|im_start|>assistant\n3 plus 4 is 7.<|im_end|>\n")
  assert chat.ChatFormat().render(SYSTEM_MULTI_TURN[:2], add_generation_prompt=True).endswith(
      "<|im_end|>\n<|im_start|>assistant\n")


CUSTOM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
          "{% else %}{{ '<|im_start|>' + m['role'] + ': ' + m['content'] | trim + '<|im_end|>' }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant: ' }}{% endif %}")


def test_a_jinja_template_string_renders_as_transformers_does(hf_chat_tokenizer, chat_tokenizer):
  for generation_prompt in (False, True):
    expected = hf_chat_tokenizer.apply_chat_template(SYSTEM_MULTI_TURN, tokenize=False, chat_template=CUSTOM,
                                                     add_generation_prompt=generation_prompt)
    assert chat.ChatFormat(CUSTOM).render(SYSTEM_MULTI_TURN, add_generation_prompt=generation_prompt) == expected
  ids, mask = chat.ChatFormat(CUSTOM).encode(chat_tokenizer, SYSTEM_MULTI_TURN)
  assert chat_tokenizer.decode(ids[mask]) == "3 plus 4 is 7.<|im_end|>7 plus 2 is 9.\n  Done.<|im_end|>"


def test_loss_mask_is_exactly_each_assistant_content_and_its_im_end(chat_tokenizer):
  fmt = chat.ChatFormat()
  ids, mask = fmt.encode(chat_tokenizer, SYSTEM_MULTI_TURN)
  assert chat_tokenizer.decode(ids) == fmt.render(SYSTEM_MULTI_TURN)
  im_end = chat_tokenizer.encode(chat.IM_END)[0]
  # the trained runs: one per assistant turn, each the content's tokens then <|im_end|>
  runs, start = [], None
  for i, on in enumerate(list(mask) + [False]):
    if on and start is None:
      start = i
    if not on and start is not None:
      runs.append((start, i))
      start = None
  assistant = [m["content"] for m in SYSTEM_MULTI_TURN if m["role"] == "assistant"]
  assert len(runs) == len(assistant)
  for (a, b), content in zip(runs, assistant):
    assert list(ids[a:b]) == chat_tokenizer.encode(content) + [im_end]
    assert chat_tokenizer.decode(ids[:a]).endswith("<|im_start|>assistant\n")  # the prompt is never trained
  assert int(np.sum(ids == im_end)) == len(SYSTEM_MULTI_TURN)  # system/user <|im_end|> are not trained
  assert int(np.sum(mask & (ids == im_end))) == len(assistant)


def test_generation_prompt_is_tokenized_as_in_training(chat_tokenizer):
  fmt = chat.ChatFormat()
  full, _ = fmt.encode(chat_tokenizer, SYSTEM_MULTI_TURN)
  for turn in (2, 4):
    prompt, _ = fmt.encode(chat_tokenizer, SYSTEM_MULTI_TURN[:turn], add_generation_prompt=True)
    assert list(full[:len(prompt)]) == list(prompt)


def test_tokenizer_without_chat_tokens_names_the_fix(tmp_path):
  from yijax.data import synthetic_chat
  from yijax.data.tokenizer import CHAT_TOKENS, Tokenizer, add_chat_tokens, train_tokenizer

  text = tmp_path / "plain.txt"
  text.write_text("\n".join(m["content"] for c in synthetic_chat.conversations(300, 1) for m in c))
  plain = train_tokenizer([str(text)], 320, str(tmp_path / "plain"), num_threads=1)
  with pytest.raises(chat.ChatTokenError, match="yijax tokenizer add-chat-tokens") as error:
    chat.check_tokenizer(plain, chat.ChatFormat())
  assert "<|im_start|>" in str(error.value)
  fixed = add_chat_tokens(plain.path, str(tmp_path / "fixed"))
  assert fixed.vocab_size == plain.vocab_size  # a trained model's embedding still fits
  ids = chat.check_tokenizer(Tokenizer(fixed.path), chat.ChatFormat())
  assert sorted(ids) == sorted(CHAT_TOKENS) and all(i >= 3 for i in ids.values())
  sample = "What is 3 plus 4? Reverse the words: apple river"
  assert fixed.decode(fixed.encode(sample)) == sample
  from yijax import cli

  assert cli.main(["yijax", "tokenizer", "add-chat-tokens", f"--tokenizer={plain.path}", f"--out={tmp_path / 'cli'}"]) == 0
  assert Tokenizer(str(tmp_path / "cli")).encode(CHAT_TOKENS[1]) == [ids[CHAT_TOKENS[1]]]


def test_bad_messages_and_templates_are_user_errors():
  from yijax.errors import ConfigError, DataError

  with pytest.raises(DataError, match="message 1"):
    chat.check_messages([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])
  with pytest.raises(ConfigError, match="neither"):
    chat.ChatFormat("llama9").render(NO_SYSTEM)
