"""Yi chat fine-tuning with the paper's hyperparameters (Yi, arXiv 2403.04652, section 4).

  yijax convert hf-to-yijax --hf=PATH/Yi-6B --out=models/yi-6b        # the base model (and its tokenizer)
  yijax train --config=configs/sft/yi_chat.py:6b --workdir=runs/yi-6b-chat \
      --config.train.init_from=models/yi-6b --config.data.sft.train_files=sft/train.jsonl \
      --config.data.sft.eval_files=sft/eval.jsonl
  yijax chat --ckpt=runs/yi-6b-chat

The paper: AdamW (beta1 0.9, beta2 0.999, eps 1e-8), sequence length 4096, batch size 64, 300 training
steps at a constant learning rate of 1e-5, weight decay 0.1, gradient clipping at 1.0, NEFTune noise scale
45 for Yi-34B-Chat and 5 for Yi-6B-Chat; ChatML format; the loss on responses only. Yi's tokenizer has
<|im_start|> (id 6) and <|im_end|> (id 7). What the paper does not give is kept from the base
config (no weight decay on norms and embeddings) or set for fine-tuning (no z-loss, no warmup).
"""

from yijax.train.config import base_config

NEFTUNE_ALPHA = {"6b": 5.0, "34b": 45.0}


def get_config(arg="6b"):
  size = (arg or "6b").lower()
  if size not in NEFTUNE_ALPHA:
    raise ValueError(f"configs/sft/yi_chat.py:{arg}: the argument is the model size, one of {sorted(NEFTUNE_ALPHA)}")
  config = base_config(f"yi_{size}")
  config.model.max_seq_len = 4096
  config.data.sft.enabled = True
  config.data.sft.template = "yi"
  # Yi's tokenizer has <|im_start|> (6) and <|im_end|> (7); should a copy not encode them as single tokens (a
  # control piece), they become user-defined in a cached copy with the same ids (yijax tokenizer add-chat-tokens)
  config.data.sft.add_chat_tokens = True
  config.train.objective = "sft"
  config.train.objective_options.neftune_alpha = NEFTUNE_ALPHA[size]
  config.train.steps = 300
  config.train.batch_size = 64
  config.train.seq_len = 4096
  config.train.z_loss = 0.0
  config.train.vocab_chunk = 8192
  config.optimizer.schedule = "constant"
  config.optimizer.lr = 1e-5
  config.optimizer.warmup_steps = 0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_norm = 1.0
  config.checkpoint.every_steps = 100
  config.eval.every_steps = 50
  config.eval.batches = 4
  config.eval.batch_size = 8
  return config
