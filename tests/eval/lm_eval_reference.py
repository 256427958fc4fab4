"""Helpers for the eval tests: a small trained tokenizer, and the
lm-evaluation-harness side of the multiple-choice cross-check.

For lm-eval this builds what it needs to evaluate a tiny Hugging Face Llama
offline (a tokenizer directory transformers loads, a local JSON task) and runs
`lm_eval.simple_evaluate`, returning per-example log-likelihoods.
"""

from __future__ import annotations

import json
import os
import random
import shutil

TASK_NAME = "yijax_mc_reference"
WORDS = ("the cat dog sat on a mat quick brown fox jumps over lazy river stone blue green red house "
         "tree water fire light dark small large").split()


def train_small_tokenizer(directory: str, vocab_size: int = 400, seed: int = 0):
  """A Yi-settings BPE tokenizer trained on ~18 KB of generated sentences (digits, é, newlines)."""
  from yijax.data.tokenizer import train_tokenizer

  rng = random.Random(seed)
  lines = []
  for _ in range(400):
    line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
    if rng.random() < 0.3:
      line += f" {rng.randint(0, 9999)}"
    if rng.random() < 0.2:
      line = line.capitalize() + "."
    if rng.random() < 0.1:
      line += " café"
    lines.append(line)
  os.makedirs(directory, exist_ok=True)
  corpus = os.path.join(directory, "corpus.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return train_tokenizer([corpus], vocab_size, directory, seed=seed)


def write_hf_tokenizer(tokenizer_model: str, hf_dir: str, add_bos_token: bool | None = None) -> None:
  """tokenizer.model + tokenizer_config.json, loadable with transformers' AutoTokenizer.

  transformers 5 converts the sentencepiece model into a tokenizers BPE;
  `add_prefix_space: false` matches Yi's add_dummy_prefix=False (without it
  every text gets a leading U+2581). Needs protobuf to read the model.
  """
  shutil.copy(tokenizer_model, os.path.join(hf_dir, "tokenizer.model"))
  config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<unk>", "add_prefix_space": False, "legacy": False}
  if add_bos_token is not None:
    config["add_bos_token"] = add_bos_token
  with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)


def write_task(directory: str, examples: list[dict]) -> str:
  """A local lm-eval multiple_choice task over `examples`; returns the include path."""
  os.makedirs(directory, exist_ok=True)
  data = os.path.join(directory, "data.jsonl")
  with open(data, "w", encoding="utf-8") as f:
    for example in examples:
      f.write(json.dumps(example, ensure_ascii=False) + "\n")
  metric = "  - metric: {}\n    aggregation: mean\n    higher_is_better: true\n"
  yaml = (
      f"task: {TASK_NAME}\n"
      "dataset_path: json\n"
      "dataset_kwargs:\n"
      f"  data_files:\n    test: {data}\n"
      f"  cache_dir: {os.path.join(directory, 'hf_datasets_cache')}\n"
      "test_split: test\n"
      "output_type: multiple_choice\n"
      'doc_to_text: "{{context}}"\n'
      'doc_to_choice: "{{choices}}"\n'
      'doc_to_target: "{{answer}}"\n'
      "metric_list:\n" + metric.format("acc") + metric.format("acc_norm") + metric.format("acc_bytes")
  )
  with open(os.path.join(directory, f"{TASK_NAME}.yaml"), "w") as f:
    f.write(yaml)
  return directory


def run_lm_eval(hf_dir: str, task_dir: str, max_length: int, add_bos_token: bool | None = None,
                batch_size: int = 4) -> dict:
  """{"acc", "acc_norm", "acc_bytes", "docs": [{"doc_id", "lls", "is_greedy", "arguments"}]}."""
  import lm_eval
  from lm_eval.tasks import TaskManager

  model_args = {"pretrained": hf_dir, "dtype": "float32", "max_length": max_length}
  if add_bos_token is not None:
    model_args["add_bos_token"] = add_bos_token
  out = lm_eval.simple_evaluate(
      model="hf", model_args=model_args, tasks=[TASK_NAME], device="cpu", batch_size=batch_size,
      num_fewshot=0, log_samples=True, bootstrap_iters=0,
      task_manager=TaskManager(include_path=task_dir, include_defaults=False),
  )
  metrics = out["results"][TASK_NAME]
  docs = []
  for sample in sorted(out["samples"][TASK_NAME], key=lambda s: s["doc_id"]):
    docs.append({
        "doc_id": sample["doc_id"],
        "lls": [float(r[0][0]) for r in sample["resps"]],
        "is_greedy": [bool(r[0][1]) for r in sample["resps"]],
        "arguments": [tuple(a) for a in sample["arguments"]],
    })
  return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
          "acc_bytes": metrics["acc_bytes,none"], "docs": docs}
