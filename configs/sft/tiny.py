"""Fine-tune the quickstart model into a tiny chat model, offline on a CPU, on the synthetic instruction set.

  yijax quickstart                                  # the base model: runs/quickstart
  yijax train --config=configs/sft/tiny.py --workdir=runs/tiny-chat
  yijax chat --ckpt=runs/tiny-chat --system="Answer briefly."
  yijax generate --ckpt=runs/tiny-chat --chat --prompt="What is 3 plus 4?" --prompt="Reverse the words: apple river"

The quickstart tokenizer has no <|im_start|>/<|im_end|>: data.sft.add_chat_tokens gives a copy in which they
take over its two rarest pieces' ids (the vocabulary and the model's shapes stay the same). The held-out
assistant-token loss is logged to WORKDIR/eval.jsonl; the greedy answers end with <|im_end|>.
"""

from yijax.train.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("tiny")
  config.train.init_from = "runs/quickstart"
  config.data.sft.enabled = True
  config.data.sft.train_files = "synthetic"
  config.data.sft.eval_files = "synthetic"
  config.data.sft.synthetic_train = 2000
  config.data.sft.synthetic_eval = 64
  config.data.sft.add_chat_tokens = True
  config.train.objective = "sft"
  config.train.objective_options.neftune_alpha = 5.0
  config.train.steps = 200
  config.train.batch_size = 8
  config.train.seq_len = 256
  config.train.z_loss = 0.0
  config.optimizer.schedule = "constant"
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_steps = 10
  config.optimizer.b2 = 0.999
  config.checkpoint.every_steps = 100
  config.eval.every_steps = 50
  config.eval.batches = 2
  config.eval.batch_size = 8
  return config
