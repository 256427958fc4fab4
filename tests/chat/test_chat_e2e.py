"""A tiny SFT run end to end: the held-out assistant loss falls, answers follow the template and stop at
<|im_end|> (`yijax generate --chat`), and `yijax chat` keeps the history over piped turns."""

import io
import json
import sys

from yijax import cli
from yijax.data import chat

from .conftest import read_jsonl


def test_sft_run_held_out_assistant_loss_falls(sft_run):
  workdir, result = sft_run
  evals = read_jsonl(f"{workdir}/eval.jsonl")
  assert [e["step"] for e in evals] == [5, 140]
  assert evals[-1]["loss"] < 0.6 * evals[0]["loss"], evals
  assert evals[0]["tokens"] == evals[-1]["tokens"] > 0
  config = json.load(open(f"{workdir}/config.json"))
  assert config["data"]["sft"]["template"] == "yi" and config["train"]["objective"] == "sft"


def test_generate_chat_stops_at_im_end(sft_run, capsys):
  workdir, _ = sft_run
  messages = ["What is 3 plus 4?", "Reverse the words: apple river", "Say water 2 times."]
  rc = cli.main(["yijax", "generate", f"--ckpt={workdir}", "--chat", "--max_new_tokens=24", "--output=-"]
                + [f"--prompt={m}" for m in messages])
  assert rc == 0
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  from yijax.data.tokenizer import Tokenizer

  im_end = Tokenizer(workdir).encode(chat.IM_END)[0]
  assert [r["message"] for r in records] == messages
  for record in records:
    assert record["prompt"].startswith("<|im_start|>user\n") and record["prompt"].endswith("<|im_start|>assistant\n")
    assert record["stopped"] and record["token_ids"][-1] == im_end and len(record["token_ids"]) < 24, record
    assert record["text"] and "<|im_end|>" not in record["text"]


def test_chat_with_piped_stdin_keeps_the_history(sft_run, tmp_path, monkeypatch, capsys):
  workdir, _ = sft_run
  monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 plus 5?\nAnd plus 3?\n"))
  saved = tmp_path / "conversation.jsonl"
  rc = cli.main(["yijax", "chat", f"--ckpt={workdir}", "--system=Answer briefly.", "--max_new_tokens=24",
                 f"--save={saved}"])
  assert rc == 0
  out = capsys.readouterr().out
  assert out.count("assistant> ") == 2
  messages = json.loads(saved.read_text())["messages"]
  assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
  assert messages[0]["content"] == "Answer briefly." and messages[3]["content"] == "And plus 3?"
  replies = [line.split("assistant> ", 1)[1] for line in out.splitlines() if line.startswith("assistant> ")]
  assert replies == [messages[2]["content"], messages[4]["content"]]


def test_second_turn_prompt_holds_the_first(sft_run):
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import chat as chat_eval
  from yijax.train import params_io

  workdir, _ = sft_run
  config, params = params_io.load_model(workdir)
  tokenizer = Tokenizer(workdir)
  session = chat_eval.ChatSession(config, params, tokenizer, chat_eval.chat_format_for(workdir), max_new_tokens=16)
  streamed = []
  first = session.reply("What is 1 plus 1?", on_text=streamed.append)
  assert "".join(streamed) == first
  session.messages.append({"role": "user", "content": "And plus 2?"})
  prompt = session.prompt_ids()
  assert tokenizer.decode(prompt) == chat.ChatFormat().render(session.messages, add_generation_prompt=True)
  assert f"<|im_start|>assistant\n{first}<|im_end|>" in tokenizer.decode(prompt)


def test_configs_hold_the_papers_hyperparameters():
  from yijax import configlib

  for size, alpha in (("6b", 5.0), ("34b", 45.0)):
    c = configlib.load_config_file(f"configs/sft/yi_chat.py:{size}")
    assert c.train.objective == "sft" and c.data.sft.enabled and c.data.sft.template == "yi"
    assert c.train.objective_options.neftune_alpha == alpha
    assert (c.train.steps, c.train.batch_size, c.train.seq_len) == (300, 64, 4096)
    o = c.optimizer
    assert (o.schedule, o.lr, o.warmup_steps, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (
        "constant", 1e-5, 0, 0.9, 0.999, 1e-8, 0.1, 1.0)
  tiny = configlib.load_config_file("configs/sft/tiny.py")
  assert tiny.train.init_from == "runs/quickstart" and tiny.data.sft.train_files == "synthetic"


def test_streamed_tokens_equal_batch_generation(sft_run):
  from yijax.data.tokenizer import Tokenizer
  from yijax.eval import chat as chat_eval
  from yijax.eval.generate import Generator
  from yijax.train import params_io

  workdir, _ = sft_run
  config, params = params_io.load_model(workdir)
  tokenizer = Tokenizer(workdir)
  fmt = chat_eval.chat_format_for(workdir)
  prompt = chat_eval.chat_prompts(tokenizer, fmt, ["Write in capitals: apple"])[0]
  generator = Generator(config, params)
  stops = chat_eval.stop_ids(tokenizer, fmt)
  assert list(generator.stream(prompt, 12, stop_ids=stops)) == generator.generate([prompt], 12, stop_ids=stops)[0]
