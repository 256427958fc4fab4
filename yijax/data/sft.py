"""Supervised fine-tuning data (`data.sft`): chat conversations packed into rows with a loss mask.

Conversations come from JSONL files (one {"messages": [...]} per line; yijax/data/chat.py) or the seeded
synthetic instruction set ("synthetic"). Each is rendered with the chat template and tokenized once when the
iterator is built (instruction sets are small: Yi's has fewer than 10K). Rows:

  tokens       int32 [b, s]   conversations one after another, then 0s
  segment_ids  int32 [b, s]   1, 2, ... per conversation, 0 on padding: attention and targets never cross them
  positions    int32 [b, s]   0.. within each conversation
  loss_mask    int32 [b, s]   1 on the tokens trained on: every assistant turn's content and its <|im_end|>

Packing is next-fit in the epoch's shuffled order (pack=False: one conversation per row); a conversation
longer than train.seq_len is dropped, truncated or an error (too_long). Every process builds the same global
batch and takes its rows; the stream is a function of (seed, data.shuffle_seed, position), so the iterator
state is {"epoch", "index"}: the next conversation to place.
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from yijax.data import chat
from yijax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
TOO_LONG = ("drop", "truncate", "error")


def default_config() -> ml_collections.ConfigDict:
  """The `data.sft` section of a run config."""
  c = ml_collections.ConfigDict()
  c.enabled = False       # True: the train loop reads chat conversations instead of prepared pretraining data
  c.train_files = ""      # JSONL files (comma-separated) of {"messages": [...]}, or "synthetic"
  c.eval_files = ""       # held-out conversations: the assistant-token loss at each evaluation ("" = none)
  c.synthetic_train = 2000  # with "synthetic": conversations in the train set (seed = train.seed + 1000)
  c.synthetic_eval = 64     # ... and in the held-out set (eval_files="synthetic"; seed 999_999)
  c.tokenizer = ""        # sentencepiece model / dir ("" = the tokenizer of train.init_from)
  c.add_chat_tokens = False  # True: a tokenizer lacking <|im_start|>/<|im_end|> gets them (same vocab size)
  c.template = "yi"       # "yi" (ChatML of Yi's chat models) or a Jinja chat template string
  c.end_of_turn = chat.IM_END  # each assistant turn is trained through this string; generation stops at it
  c.add_bos = False       # prepend the tokenizer's bos to every conversation (Yi's chat template does not)
  c.pack = True           # several conversations per row (segment ids keep them apart)
  c.too_long = "drop"     # a conversation longer than train.seq_len: drop | truncate | error
  c.shuffle = True        # a new order every epoch
  return c


def enabled(data_cfg) -> bool:
  sft = data_cfg.get("sft") if hasattr(data_cfg, "get") else None
  return bool(sft is not None and sft.get("enabled"))


def check(data_cfg) -> None:
  cfg = data_cfg.sft
  if not cfg.train_files:
    raise ConfigError("data.sft.enabled is set but data.sft.train_files is empty; give JSONL files of "
                      "{\"messages\": [...]} or \"synthetic\"")
  if cfg.too_long not in TOO_LONG:
    raise ConfigError(f"data.sft.too_long={cfg.too_long!r} must be one of {TOO_LONG}")
  chat.template_text(cfg.template)


def load(files: str, synthetic_count: int, synthetic_seed: int) -> list[list[dict]]:
  """The conversations of comma-separated JSONL files, or of the synthetic set."""
  if files.strip() == SYNTHETIC:
    from yijax.data import synthetic_chat

    return synthetic_chat.conversations(synthetic_count, synthetic_seed)
  conversations = []
  for path in filter(None, (p.strip() for p in files.split(","))):
    conversations += chat.read_conversations(path)
  return conversations


@dataclasses.dataclass
class Encoded:
  ids: list[np.ndarray]
  masks: list[np.ndarray]
  dropped: int = 0


def encode_all(conversations, tokenizer, fmt: chat.ChatFormat, seq_len: int, too_long: str = "drop") -> Encoded:
  """Every conversation's (ids, loss mask), with too_long applied; an error if none is left to train on."""
  out = Encoded([], [])
  for i, messages in enumerate(conversations):
    ids, mask = fmt.encode(tokenizer, messages)
    if len(ids) > seq_len:
      if too_long == "error":
        raise DataError(f"conversation {i} has {len(ids)} tokens, more than train.seq_len={seq_len} "
                        "(data.sft.too_long=error; set drop or truncate, or raise train.seq_len)")
      if too_long == "drop":
        out.dropped += 1
        continue
      ids, mask = ids[:seq_len], mask[:seq_len]
    if not mask[1:].any():  # nothing to predict: no assistant token after the first position
      out.dropped += 1
      continue
    out.ids.append(ids)
    out.masks.append(mask)
  if not out.ids:
    raise DataError(f"no conversation with an assistant turn fits train.seq_len={seq_len} "
                    f"({out.dropped} dropped)")
  if out.dropped:
    log.info(f"data.sft: {out.dropped} of {len(conversations)} conversations dropped (too long or no "
             "assistant turn)")
  return out


def pack_rows(items, rows: int, seq_len: int, pack: bool = True) -> tuple[dict, int]:
  """Places (ids, mask) items in order into `rows` rows (next-fit); returns the batch and how many it took."""
  batch = {name: np.zeros((rows, seq_len), np.int32) for name in ("tokens", "segment_ids", "positions", "loss_mask")}
  row, fill, segment, taken = 0, 0, 0, 0
  for ids, mask in items:
    n = len(ids)
    if fill and (not pack or fill + n > seq_len):
      row, fill, segment = row + 1, 0, 0
    if row >= rows:
      break
    segment += 1
    batch["tokens"][row, fill:fill + n] = ids
    batch["segment_ids"][row, fill:fill + n] = segment
    batch["positions"][row, fill:fill + n] = np.arange(n)
    batch["loss_mask"][row, fill:fill + n] = mask
    fill += n
    taken += 1
  return batch, taken


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


class SftIterator:
  """Endless packed batches of conversations; this process's rows of each global batch."""

  def __init__(self, encoded: Encoded, seq_len: int, global_rows: int, first_row: int, rows: int, seed: int,
               shuffle: bool = True, pack: bool = True):
    self.items = list(zip(encoded.ids, encoded.masks))
    self.seq_len, self.global_rows, self.first_row, self.rows = seq_len, global_rows, first_row, rows
    self.seed, self.shuffle, self.pack = seed, shuffle, pack
    self.epoch, self.index = 0, 0
    self._order_epoch, self._order = -1, None

  def _order_of(self, epoch: int) -> np.ndarray:
    if self._order_epoch != epoch:
      n = len(self.items)
      self._order = np.random.default_rng(_seed(self.seed, epoch)).permutation(n) if self.shuffle else np.arange(n)
      self._order_epoch = epoch
    return self._order

  def _stream(self):
    epoch, index = self.epoch, self.index
    while True:
      order = self._order_of(epoch)
      if index >= len(order):
        epoch, index = epoch + 1, 0
        continue
      yield epoch, index, self.items[order[index]]
      index += 1

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    stream = self._stream()
    positions, items, total = [], [], 0
    capacity = self.global_rows * self.seq_len
    while total <= capacity and (self.pack or len(items) <= self.global_rows):  # enough to fill every row
      epoch, index, item = next(stream)
      positions.append((epoch, index))
      items.append(item)
      total += len(item[0])
    batch, taken = pack_rows(items, self.global_rows, self.seq_len, self.pack)
    epoch, index = positions[taken] if taken < len(positions) else (positions[-1][0], positions[-1][1] + 1)
    self.epoch, self.index = epoch, index
    return {k: v[self.first_row:self.first_row + self.rows] for k, v in batch.items()}

  def get_state(self) -> dict:
    return {"epoch": int(self.epoch), "index": int(self.index)}

  def set_state(self, state: dict) -> None:
    self.epoch, self.index = int(state["epoch"]), int(state["index"])


def train_iterator(data_cfg, encoded: Encoded, seq_len: int, batch_size: int, seed: int = 0,
                   process_index: int | None = None, process_count: int | None = None) -> SftIterator:
  """batch_size rows per process (the global batch is batch_size x processes)."""
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  cfg = data_cfg.sft
  return SftIterator(encoded, seq_len, batch_size * process_count, process_index * batch_size, batch_size,
                     _seed(seed, data_cfg.shuffle_seed), bool(cfg.shuffle), bool(cfg.pack))


def eval_batches(encoded: Encoded, seq_len: int, batch_size: int, max_batches: int | None = None,
                 pack: bool = True) -> list[dict[str, np.ndarray]]:
  """Every held-out conversation once, in order, packed into whole batches (the last one padded)."""
  items, batches = list(zip(encoded.ids, encoded.masks)), []
  while items and (max_batches is None or len(batches) < max_batches):
    batch, taken = pack_rows(items, batch_size, seq_len, pack)
    batches.append(batch)
    items = items[taken:]
  return batches
