"""Supervised fine-tuning of a chat model (Yi, section 4): the `sft` objective and the `data.sft` run plumbing.

  train.objective = "sft"   next-token cross entropy on the batch's loss_mask tokens only (every assistant
                            turn's content and <|im_end|>; yijax/data/sft.py), summed and divided by their count
  train.objective_options.neftune_alpha
                            NEFTune (Jain et al. 2023): during training only, the token embeddings get noise
                            uniform in [-1, 1] * alpha / sqrt(L * d), d = model.hidden_size and L = the length of
                            the token's own conversation (its segment: a packed row holds several, and each gets
                            the noise it would get alone, as in the unpacked original). Yi: alpha 45 for
                            Yi-34B-Chat, 5 for Yi-6B-Chat. 0 = off.

The loop calls `resolve` (the tokenizer with its chat tokens, the encoded train and held-out sets),
`train_iterator` and `held_out_evaluator` when data.sft.enabled.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yijax import models
from yijax.errors import ConfigError
from yijax.models.config import ModelConfig
from yijax.train import loss as losses
from yijax.train import objectives

NOISE_STREAM = 0x4E4546  # folded into the step's key: NEFTune's draws differ from dropout's


def segment_lengths(segment_ids) -> jax.Array:
  """The length of each token's segment [b, s] (0 on padding)."""
  s = segment_ids.shape[1]
  counts = jax.vmap(lambda row: jnp.bincount(row, length=s + 1))(segment_ids)  # [b, s + 1]
  lengths = jnp.take_along_axis(counts, segment_ids, axis=1)
  return jnp.where(segment_ids != 0, lengths, 0)


def neftune_noise(key, segment_ids, hidden_size: int, alpha: float, dtype=jnp.float32) -> jax.Array:
  """uniform(-1, 1) * alpha / sqrt(L * d) [b, s, d], L = the token's segment length; 0 on padding."""
  b, s = segment_ids.shape
  lengths = segment_lengths(segment_ids).astype(jnp.float32)
  scale = jnp.where(lengths > 0, alpha / jnp.sqrt(jnp.maximum(lengths, 1.0) * hidden_size), 0.0)
  return (jax.random.uniform(key, (b, s, hidden_size), jnp.float32, -1.0, 1.0) * scale[..., None]).astype(dtype)


def target_mask(batch) -> jax.Array:
  """Bool [b, s]: position t is scored when tokens[t+1] is a trained token of the same conversation."""
  _, mask = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  trained_next = jnp.concatenate([batch["loss_mask"][:, 1:], jnp.zeros_like(batch["loss_mask"][:, :1])], axis=1)
  return mask & (trained_next != 0)


def assistant_nll(config: ModelConfig, params, batch, vocab_chunk: int = 0, noise=None):
  """(nll [b, s], lse [b, s], mask [b, s] float: the assistant targets, aux)."""
  hidden, aux = models.apply(config, params, batch["tokens"], batch["positions"], batch["segment_ids"],
                             return_hidden=True, return_aux=True, dropout_rng=batch.get("dropout_rng"),
                             embedding_noise=noise)
  targets, _ = losses.next_token_targets(batch["tokens"], batch["segment_ids"])
  nll, lse = losses.cross_entropy(hidden, models.head_kernel(params, config), targets, vocab_chunk)
  return nll, lse, target_mask(batch).astype(jnp.float32), aux


def objective(config: ModelConfig, params, batch, reference, options):
  """Cross entropy summed over assistant target tokens + z-loss + the model's aux losses (NEFTune noise when
  options["neftune_alpha"] > 0)."""
  alpha = float(options.get("neftune_alpha", 0.0) or 0.0)
  noise = None
  if alpha > 0:
    key = jax.random.fold_in(batch["dropout_rng"], NOISE_STREAM)
    noise = neftune_noise(key, batch["segment_ids"], config.hidden_size, alpha, jnp.dtype(config.dtype))
  nll, lse, mask, aux = assistant_nll(config, params, batch, options.get("vocab_chunk", 0), noise)
  count = jnp.sum(mask)
  nll_sum, z_sum = jnp.sum(nll * mask), jnp.sum(jnp.square(lse) * mask)
  total = nll_sum + options.get("z_loss", 0.0) * z_sum + objectives.aux_total(aux) * jnp.maximum(count, 1.0)
  return total, count, {"loss": nll_sum, "z_loss": z_sum}, aux


objective.needs_rng = True  # the train step passes batch["dropout_rng"] (NEFTune's draws)


# ---------------------------------------------------------------- run plumbing (called by the loop)


@dataclasses.dataclass
class SftData:
  tokenizer_path: str
  train: Any  # data.sft.Encoded
  eval: Any | None
  stop_ids: dict


def _init_tokenizer(config) -> str:
  from yijax.train import params_io

  if not config.train.init_from:
    raise ConfigError("data.sft.tokenizer is empty and there is no train.init_from to take the tokenizer from; "
                      "set data.sft.tokenizer=PATH (a sentencepiece model with <|im_start|>/<|im_end|>)")
  try:
    location = params_io.locate_model(config.train.init_from)
  except params_io.CheckpointError as e:
    raise ConfigError(f"train.init_from={config.train.init_from}: {e} (configs/sft/tiny.py starts from "
                      "`yijax quickstart`'s runs/quickstart: run that first)") from None
  if not location.tokenizer:
    raise ConfigError(f"train.init_from={config.train.init_from} holds no tokenizer.model; set data.sft.tokenizer")
  return location.tokenizer


def chat_tokenizer_path(path: str) -> str:
  """A copy of the tokenizer at `path` with the chat tokens (tokenizer.add_chat_tokens), made once into
  $YIJAX_CACHE_DIR/chat-tokenizers/<sha of the source> and reused."""
  import fcntl

  from yijax.data import tokenizer as tokenizer_lib

  source = tokenizer_lib.resolve_model_path(path)
  digest = tokenizer_lib.file_sha256(source)[:16]
  root = os.path.join(os.environ.get("YIJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "yijax"),
                      "chat-tokenizers")
  out = os.path.join(root, digest)
  os.makedirs(root, exist_ok=True)
  with open(out + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isfile(os.path.join(out, tokenizer_lib.META_FILE)):
      tokenizer_lib.add_chat_tokens(source, out)
  return os.path.join(out, tokenizer_lib.MODEL_FILE)


def resolve(config, model_config: ModelConfig) -> SftData:
  """The run's chat tokenizer (checked: it fits the model and has the template's special tokens) and its
  encoded train and held-out conversations."""
  from yijax.data import chat, sft as sft_data
  from yijax.data.tokenizer import Tokenizer

  cfg = config.data.sft
  sft_data.check(config.data)
  if config.train.objective not in ("sft", "yijax.train.sft:objective"):
    raise ConfigError(f"data.sft.enabled with train.objective={config.train.objective!r} would train on every "
                      "token; set train.objective=sft (the loss on assistant tokens only)")
  path = cfg.tokenizer or _init_tokenizer(config)
  if cfg.add_chat_tokens:
    path = chat_tokenizer_path(path)
  tokenizer = Tokenizer(path)
  tokenizer.check_fits(model_config.vocab_size)
  fmt = chat.ChatFormat.from_config(cfg)
  stop_ids = chat.check_tokenizer(tokenizer, fmt)
  seq_len = int(config.train.seq_len)
  train = sft_data.encode_all(sft_data.load(cfg.train_files, int(cfg.synthetic_train), int(config.train.seed) + 1000),
                              tokenizer, fmt, seq_len, cfg.too_long)
  held_out = None
  if cfg.eval_files:
    held_out = sft_data.encode_all(sft_data.load(cfg.eval_files, int(cfg.synthetic_eval), 999_999), tokenizer, fmt,
                                   seq_len, cfg.too_long)
  return SftData(tokenizer.path, train, held_out, stop_ids)


def held_out_evaluator(context, batches: list[dict]):
  """Held-out loss over assistant target tokens only: {"loss", "perplexity", "tokens"}."""
  from yijax.train import scoring

  def evaluate(params, step: int = 0) -> dict:
    nll, count = 0.0, 0
    for batch in batches:
      targets, mask = scoring.host_targets(batch["tokens"], batch["segment_ids"])
      trained_next = np.concatenate([batch["loss_mask"][:, 1:], np.zeros_like(batch["loss_mask"][:, :1])], axis=1)
      mask = mask & (trained_next != 0)
      log_probs, _ = context.scorer.token_log_probs(params, batch["tokens"], targets, batch["positions"],
                                                    batch["segment_ids"])
      nll -= float(np.sum(np.where(mask, log_probs, 0.0)))
      count += int(mask.sum())
    loss = nll / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": count}

  return evaluate

