"""Chat fine-tuning test fixtures: a ChatML tokenizer trained here, and one short SFT run shared by the tests."""

import json
import os

import pytest

MODEL = dict(vocab_size=384, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
             max_seq_len=256)


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
  """A 384-piece tokenizer with <|im_start|>/<|im_end|> (ids 3, 4), trained on rendered synthetic chats."""
  from yijax.data import chat, synthetic_chat
  from yijax.data.tokenizer import CHAT_TOKENS, train_tokenizer

  root = tmp_path_factory.mktemp("chat-tokenizer")
  text = root / "chats.txt"
  fmt = chat.ChatFormat()
  text.write_text("\n".join(fmt.render(c) for c in synthetic_chat.conversations(400, seed=5)))
  return train_tokenizer([str(text)], 384, str(root / "tok"), num_threads=1, user_defined_symbols=CHAT_TOKENS)


def sft_config(tokenizer_path: str, steps: int = 140, **data):
  from yijax.train.config import base_config

  c = base_config("tiny")
  c.model.update(MODEL)
  c.data.sft.update(dict(enabled=True, train_files="synthetic", eval_files="synthetic", tokenizer=tokenizer_path,
                         synthetic_eval=32, **data))
  c.train.objective = "sft"
  c.train.objective_options.neftune_alpha = 5.0
  c.train.steps, c.train.batch_size, c.train.seq_len, c.train.z_loss = steps, 8, 128, 0.0
  c.train.progress_bar, c.train.tensorboard = False, False
  c.optimizer.update(dict(lr=6e-3, warmup_steps=5, schedule="constant"))
  c.checkpoint.every_steps, c.checkpoint.async_save = 1000, False
  c.eval.update(dict(every_steps=0, steps=[5], batches=2, batch_size=8))
  return c


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, chat_tokenizer):
  """A tiny model fine-tuned from scratch for 140 steps on the synthetic instruction set: (run dir, result)."""
  from yijax.train import loop

  workdir = str(tmp_path_factory.mktemp("sft-run"))
  result = loop.train(sft_config(chat_tokenizer.path), workdir)
  return workdir, result


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def hf_chat_tokenizer(tmp_path, chat_tokenizer):
  """transformers' tokenizer of the same sentencepiece model, with Yi's chat template (built locally)."""
  import shutil

  from transformers import AutoTokenizer

  from yijax.data import chat

  directory = tmp_path / "hf-tok"
  directory.mkdir()
  shutil.copy(chat_tokenizer.path, directory / "tokenizer.model")
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "LlamaTokenizer", "chat_template": chat.YI_TEMPLATE, "bos_token": "<|startoftext|>",
      "eos_token": "<|endoftext|>", "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": False}))
  return AutoTokenizer.from_pretrained(os.fspath(directory))
