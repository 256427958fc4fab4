"""Min-K% Prob membership inference metrics against direct computations, and `run_mia` end to end."""

import json

import jax
import numpy as np
import pytest
from absl import flags

from yijax import models
from yijax.eval import mia
from yijax.models import presets
from yijax.train import params_io
from yijax.unlearning import evaluate


def test_min_k_score_is_the_mean_of_the_lowest_k_percent():
  log_probs = np.array([-0.1, -3.0, -0.5, -2.0, -1.0, -0.2, -4.0, -0.3, -0.7, -0.9])
  assert mia.min_k_score(log_probs, 30) == pytest.approx(np.mean([-4.0, -3.0, -2.0]))
  assert mia.min_k_score(log_probs, 100) == pytest.approx(log_probs.mean())
  assert mia.min_k_score(log_probs[:3], 20) == pytest.approx(-3.0)  # at least one token


def _brute_force(members, others):
  thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([members, others]))])
  tpr = np.array([(members >= t).mean() for t in thresholds])
  fpr = np.array([(others >= t).mean() for t in thresholds])
  pairs = [(m > o) + 0.5 * (m == o) for m in members for o in others]
  return {"auc_raw": float(np.mean(pairs)), "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
          "tpr_at_5pct_fpr": float(tpr[fpr < 0.05].max())}


def test_roc_metrics_match_a_direct_computation_and_sklearn():
  from sklearn.metrics import roc_auc_score

  rng = np.random.default_rng(0)
  members = np.round(rng.normal(0.5, 1.0, 60), 1)  # rounded: ties between and within the groups
  others = np.round(rng.normal(0.0, 1.0, 60), 1)
  got = mia.roc_metrics(members, others)
  for key, value in _brute_force(members, others).items():
    assert got[key] == pytest.approx(value), key
  labels = np.r_[np.ones(60), np.zeros(60)]
  assert got["auc_raw"] == pytest.approx(roc_auc_score(labels, np.r_[members, others]))
  assert got["auc"] == got["auc_raw"] > 0.5
  flipped = mia.roc_metrics(-members, -others)  # members now score lower: the code reports 1 - AUC
  assert flipped["auc_raw"] == pytest.approx(1 - got["auc_raw"]) and flipped["auc"] == pytest.approx(got["auc"])
  assert mia.roc_metrics(np.arange(10.0), np.arange(10.0))["auc"] == pytest.approx(0.5)


def test_min_k_metrics_per_k():
  rng = np.random.default_rng(1)
  members = [rng.normal(-1.0, 1.0, 30) for _ in range(20)]
  others = [rng.normal(-1.5, 1.0, 30) for _ in range(20)]
  out = mia.min_k_metrics(members, others, (30, 100))
  assert set(out) == {"30", "100"}
  direct = mia.roc_metrics([mia.min_k_score(m, 30) for m in members], [mia.min_k_score(o, 30) for o in others])
  assert out["30"] == direct


def test_sequence_weighted_perplexity():
  scored = [(np.log([0.5, 0.5]), np.array([True, False])), (np.log([0.1] * 8), np.zeros(8, bool))]
  out = evaluate.sequence_metrics(scored)
  assert out["perplexity"] == pytest.approx(np.exp((np.log(2) + np.log(10)) / 2))  # each sequence counts once
  assert out["accuracy"] == pytest.approx(1 / 10) and out["sequences"] == 2 and out["tokens"] == 10


def test_run_mia_prints_and_writes_the_metrics(tmp_path, capsys):
  from yijax.data.tokenizer import train_tokenizer

  (tmp_path / "sample.txt").write_text("alpha beta gamma delta epsilon zeta eta theta 0123456789\n" * 50)
  train_tokenizer([str(tmp_path / "sample.txt")], 300, str(tmp_path / "tokenizer"))
  config = presets.get("tiny").replace(vocab_size=300, num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                                       head_dim=16, mlp_dim=64, max_seq_len=64)
  params_io.save_model(str(tmp_path / "model"), models.init_params(config, jax.random.key(0)), config)
  for name, words in (("members", "alpha beta gamma"), ("nonmembers", "delta epsilon zeta")):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      for i in range(4):
        f.write(json.dumps({"text": f"{words} {i} " * (5 + i)}) + "\n")
  fv = flags.FlagValues()
  mia.define_mia_flags(fv)
  out = tmp_path / "mia.json"
  fv([
      "mia", f"--ckpt={tmp_path / 'model'}", f"--tokenizer={tmp_path / 'tokenizer'}",
      f"--members={tmp_path / 'members.jsonl'}", f"--nonmembers={tmp_path / 'nonmembers.jsonl'}",
      "--chunk_len=16", "--k=30,100", f"--out={out}"])
  assert mia.run_mia(fv) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed == json.loads(out.read_text())
  assert set(printed["auc"]) == {"30", "100"} and all(0.5 <= v <= 1 for v in printed["auc"].values())
  assert printed["members"] == printed["nonmembers"] > 0
  assert set(printed["min_k"]["30"]) == {"auc", "auc_raw", "balanced_accuracy", "tpr_at_5pct_fpr"}
