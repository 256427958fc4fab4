"""Autoregressive generation with a functional KV cache.

Prompts of different lengths are right-padded into one batch; each prompt's
tokens sit at positions 0..len-1 and its new tokens continue from len, so one
cache slot per position serves every prompt. `prefill` (the prompt) and
`decode` (a `lax.while_loop` of single-token steps that stops when every
prompt has hit a stop token or the budget) are each compiled once per
(batch, prompt bucket, cache length) and reused across calls: sampling
settings, stop tokens and the token budget are traced values, not constants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yijax import models
from yijax.errors import ConfigError
from yijax.models.config import ModelConfig

MAX_STOP_IDS = 8


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self) -> "Sampling":
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise ConfigError(f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ConfigError(f"--top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"--top_p must be in (0, 1], got {self.top_p}")
    return self


def check_length(prompt_tokens: int, max_new_tokens: int, max_seq_len: int) -> None:
  """A prompt plus the tokens to generate must fit the model's positions (model.max_seq_len): what `yijax
  generate` checks before loading weights. The library's Generator does not, so that extrapolation studies
  (the needle test before context extension) can run a model past its trained length."""
  if max_new_tokens < 1:
    raise ConfigError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
  if prompt_tokens + max_new_tokens > max_seq_len:
    raise ConfigError(f"a prompt of {prompt_tokens} tokens plus --max_new_tokens={max_new_tokens} exceeds the "
                      f"model's max_seq_len={max_seq_len}; lower --max_new_tokens or shorten the prompt")


def sample_logits(logits, key, temperature, top_k, top_p):
  """Next tokens [b] from logits [b, vocab]; all settings may be traced scalars."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  sorted_desc = jnp.sort(scaled, axis=-1)[:, ::-1]
  vocab = logits.shape[-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jnp.take_along_axis(sorted_desc, jnp.broadcast_to(k - 1, (logits.shape[0], 1)), axis=-1)
  scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
  # top-p: keep the smallest prefix of the sorted distribution whose mass reaches top_p
  sorted_probs = jax.nn.softmax(jnp.where(sorted_desc < kth, -jnp.inf, sorted_desc), axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = mass_before < top_p
  cutoff = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
  sampled = jax.random.categorical(key, scaled, axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def bucket_length(n: int) -> int:
  size = 16
  while size < n:
    size *= 2
  return size


class Generator:
  """Compiled prefill + decode for one model; call `generate` repeatedly."""

  def __init__(self, config: ModelConfig, params: Any, cache_dtype=None):
    # prefill attends through the model's own kernel (blockwise / cuDNN / splash per attention_impl: memory
    # linear in the prompt), decode through XLA attention against the cache
    self.config = config.replace(remat_policy="none")
    self.params = params
    self.cache_dtype = cache_dtype or config.dtype
    self.trace_counts = {"prefill": 0, "decode": 0}
    self._prefill = jax.jit(self._prefill_fn)
    donate = (1,) if jax.default_backend() != "cpu" else ()
    self._decode = jax.jit(self._decode_fn, donate_argnums=donate)
    self._step = jax.jit(self._step_fn, donate_argnums=donate)

  def _step_fn(self, params, cache, token, positions, key, temperature, top_k, top_p):
    """One decoding step of a batch: (the next tokens [b], the cache with `token` [b] at `positions` [b, 1])."""
    logits, cache = models.apply(self.config, params, token[:, None], positions, cache=cache)
    return sample_logits(logits[:, 0], key, temperature, top_k, top_p), cache

  def stream(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(), seed: int = 0,
             stop_ids: Sequence[int] = ()) -> "TokenStream":
    """The new tokens of one prompt as they are decoded (TokenStream); the same tokens as `generate` for
    greedy decoding."""
    return TokenStream(self, prompt, max_new_tokens, sampling, seed, stop_ids)

  def _prefill_fn(self, params, cache, tokens, lengths, key, temperature, top_k, top_p):
    self.trace_counts["prefill"] += 1
    index = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    valid = index < lengths[:, None]
    positions = jnp.where(valid, index, -1)  # padding: position -1, never cached
    # segment ids with a cache: a prefill into the empty cache (models.apply)
    logits, cache = models.apply(self.config, params, tokens, positions, valid.astype(jnp.int32), cache=cache)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return sample_logits(last, key, temperature, top_k, top_p), cache

  def _decode_fn(self, params, cache, out, first, lengths, key, max_new, stop_ids, temperature, top_k, top_p):
    self.trace_counts["decode"] += 1
    out = out.at[:, 0].set(first)
    done = jnp.any(first[:, None] == stop_ids[None, :], axis=-1)

    def cond(state):
      step, _, _, done, _ = state
      return (step < max_new) & ~jnp.all(done)

    def body(state):
      step, out, cache, done, key = state
      key, sub = jax.random.split(key)
      token = out[:, step - 1]
      positions = (lengths + step - 1)[:, None]
      logits, cache = models.apply(self.config, params, token[:, None], positions, cache=cache)
      nxt = sample_logits(logits[:, 0], sub, temperature, top_k, top_p)
      nxt = jnp.where(done, 0, nxt)
      done = done | jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
      return step + 1, out.at[:, step].set(nxt), cache, done, key

    step, out, _, done, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, done, key))
    return out, step

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
               seed: int = 0, stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """New token ids per prompt (each ends at its first stop token, included)."""
    sampling.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ConfigError("every prompt needs at least one token")
    if max_new_tokens < 1:
      raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(stop_ids) > MAX_STOP_IDS:
      raise ConfigError(f"at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")
    longest = max(len(p) for p in prompts)  # beyond max_seq_len is allowed here: RoPE extrapolation studies
    bucket = bucket_length(longest)
    cache_len = _round_up(bucket + max_new_tokens, 128)
    tokens = np.zeros((len(prompts), bucket), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, : len(p)] = p
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    stops = np.full((MAX_STOP_IDS,), -1, np.int32)
    stops[: len(stop_ids)] = list(stop_ids)
    knobs = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
    key_prefill, key_decode = jax.random.split(jax.random.key(seed))
    cache = models.init_cache(self.config, len(prompts), cache_len, self.cache_dtype)
    first, cache = self._prefill(self.params, cache, jnp.asarray(tokens), lengths, key_prefill, *knobs)
    buffer = jnp.zeros((len(prompts), cache_len), jnp.int32)
    out, steps = self._decode(self.params, cache, buffer, first, lengths, key_decode, jnp.int32(max_new_tokens),
                              jnp.asarray(stops), *knobs)
    out = np.asarray(out)[:, : int(steps)]
    results = []
    for row in out:
      ids = []
      for token in row.tolist():
        ids.append(token)
        if token in stop_ids:
          break
      results.append(ids)
    return results


class TokenStream:
  """One prompt's new tokens, one at a time (interactive chat): the Generator's prefill, then a compiled
  single-token step per token (compiled once per cache length). Iterate it; a stop token is yielded and ends
  it, as does the budget."""

  def __init__(self, generator: "Generator", prompt: Sequence[int], max_new_tokens: int,
               sampling: Sampling = Sampling(), seed: int = 0, stop_ids: Sequence[int] = ()):
    sampling.validate()
    if not prompt or max_new_tokens < 1:
      raise ConfigError("a token stream needs a prompt of at least one token and max_new_tokens >= 1")
    self.generator, self.max_new_tokens, self.stop_ids = generator, max_new_tokens, set(int(s) for s in stop_ids)
    self.knobs = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
    bucket = bucket_length(len(prompt))
    self.cache_len = _round_up(bucket + max_new_tokens, 128)
    tokens = np.zeros((1, bucket), np.int32)
    tokens[0, :len(prompt)] = prompt
    self.length = len(prompt)
    key_prefill, self.key = jax.random.split(jax.random.key(seed))
    cache = models.init_cache(generator.config, 1, self.cache_len, generator.cache_dtype)
    self.next_token, self.cache = generator._prefill(generator.params, cache, jnp.asarray(tokens),
                                                     jnp.asarray([len(prompt)], jnp.int32), key_prefill, *self.knobs)
    self.produced = 0

  def __iter__(self):
    return self

  def __next__(self) -> int:
    if self.produced >= self.max_new_tokens:
      raise StopIteration
    token = int(self.next_token[0])
    self.produced += 1
    if token in self.stop_ids:
      self.max_new_tokens = self.produced  # the stop token is the last one
    elif self.produced < self.max_new_tokens:
      self.key, sub = jax.random.split(self.key)
      position = jnp.asarray([[self.length + self.produced - 1]], jnp.int32)
      self.next_token, self.cache = self.generator._step(self.generator.params, self.cache, self.next_token,
                                                         position, sub, *self.knobs)
    return token


def greedy_reference(config: ModelConfig, params: Any, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
  """Greedy decoding by a full forward pass per step (no cache): the test oracle.

  The row is padded to its final length (causal attention: later padding
  changes nothing), so every step reuses one compiled forward pass."""
  total = len(prompt) + max_new_tokens
  apply = jax.jit(lambda p, t: models.apply(config.replace(attention_impl="xla"), p, t))
  tokens = np.zeros((1, total), np.int32)
  tokens[0, : len(prompt)] = prompt
  for position in range(len(prompt), total):
    logits = apply(params, jnp.asarray(tokens))
    tokens[0, position] = int(jnp.argmax(logits[0, position - 1]))
  return tokens[0, len(prompt):].tolist()
