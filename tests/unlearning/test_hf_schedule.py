"""optimizer.schedule="hf_cosine" equals transformers' get_cosine_schedule_with_warmup (warmup_ratio too)."""

import math

import pytest

from yijax.train import optimizer
from yijax.train.config import base_config


def _hf_values(peak, warmup, total):
  import torch
  import transformers

  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
  scheduler = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
  values = []
  for _ in range(total + 1):
    values.append(opt.param_groups[0]["lr"])  # the lr optimizer step k uses
    opt.step()
    scheduler.step()
  return values


@pytest.mark.parametrize("total,ratio,warmup_steps", [(4, 0.03, 0), (8, 0.03, 0), (100, 0.03, 0), (7, 0.2, 0),
                                                      (50, 0.0, 5), (20, 0.0, 0)])
def test_hf_cosine_matches_transformers(total, ratio, warmup_steps):
  cfg = base_config().optimizer
  cfg.update({"schedule": "hf_cosine", "lr": 2e-5, "warmup_ratio": ratio, "warmup_steps": warmup_steps})
  warmup = math.ceil(total * ratio) if ratio else warmup_steps  # TrainingArguments.get_warmup_steps
  assert optimizer.warmup_steps(cfg, total) == warmup
  schedule = optimizer.learning_rate_schedule(cfg, total)
  expected = _hf_values(2e-5, warmup, total)
  for step, value in enumerate(expected):
    assert float(schedule(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step


def test_bad_warmup_ratio_names_the_field():
  cfg = base_config().optimizer
  cfg.update({"schedule": "hf_cosine", "warmup_ratio": 1.5})
  with pytest.raises(Exception, match="optimizer.warmup_ratio"):
    optimizer.learning_rate_schedule(cfg, 10)
