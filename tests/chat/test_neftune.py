"""NEFTune: uniform noise of scale alpha / sqrt(L * d) on the embeddings, per conversation, in training only."""

import jax
import jax.numpy as jnp
import numpy as np

from yijax.train import sft

from .conftest import MODEL


def test_noise_scale_is_alpha_over_sqrt_length_times_dim():
  d, alpha = 64, 5.0
  segments = np.zeros((2, 512), np.int32)
  segments[0, :400], segments[0, 400:500] = 1, 2  # two packed conversations, then padding
  segments[1, :] = 1
  noise = np.asarray(sft.neftune_noise(jax.random.key(0), jnp.asarray(segments), d, alpha))
  for row, (start, stop, length) in [(0, (0, 400, 400)), (0, (400, 500, 100)), (1, (0, 512, 512))]:
    part = noise[row, start:stop]
    bound = alpha / np.sqrt(length * d)
    assert np.abs(part).max() <= bound * (1 + 1e-6) and np.abs(part).max() > 0.99 * bound
    np.testing.assert_allclose(part.std(), bound / np.sqrt(3), rtol=0.03)  # uniform in [-bound, bound]
  assert np.all(noise[0, 500:] == 0)
  np.testing.assert_array_equal(np.asarray(sft.segment_lengths(jnp.asarray(segments)))[0, [0, 450, 510]], [400, 100, 0])


def _step_losses(params, config, batch, alpha):
  import optax

  from yijax.train import step as step_lib

  optimizer = optax.sgd(0.0)
  step = step_lib.make_train_step(config, optimizer, lambda s: 0.0, 0.0, 0, 1, "sft",
                                  objective_options={"neftune_alpha": alpha})
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                              jax.random.key_data(jax.random.key(1)))
  return float(jax.jit(step)(state, batch)[1]["loss"])


def test_noise_only_while_training(chat_tokenizer, tiny_config):
  from yijax import models
  from yijax.data import chat, sft as sft_data, synthetic_chat
  from yijax.train import evaluation

  config = tiny_config.replace(**{k: MODEL[k] for k in ("vocab_size", "hidden_size", "num_layers", "head_dim")})
  params = models.init_params(config, jax.random.key(0))
  encoded = sft_data.encode_all(synthetic_chat.conversations(12, 2), chat_tokenizer, chat.ChatFormat(), 128)
  batch, _ = sft_data.pack_rows(list(zip(encoded.ids, encoded.masks)), 2, 128)
  device_batch = jax.tree.map(jnp.asarray, batch)
  clean = _step_losses(params, config, device_batch, 0.0)
  noisy = _step_losses(params, config, device_batch, 45.0)
  assert abs(noisy - clean) > 1e-4  # the train step adds the noise
  evaluate = sft.held_out_evaluator(evaluation.context(config), [batch])
  np.testing.assert_allclose(evaluate(params)["loss"], clean, rtol=1e-5)  # evaluation never does
