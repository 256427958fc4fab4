"""Sentencepiece tokenizers: training one with Yi's settings, loading any `.model`.

Yi's tokenizer is a sentencepiece BPE model with digits split into single
characters, byte fallback for anything outside the vocabulary, identity
normalization, no dummy-prefix space, and pieces made only of whitespace
allowed (code indentation). `train_tokenizer` uses the same settings, with
<unk>=0, <|startoftext|>=1 (bos) and <|endoftext|>=2 (eos) as in Yi.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Iterable, Sequence

from yijax import paths
from yijax.errors import DataError, MissingFileError

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer_meta.json"
BOS_PIECE, EOS_PIECE = "<|startoftext|>", "<|endoftext|>"


def _sp():
  import sentencepiece

  return sentencepiece


def resolve_model_path(path: str) -> str:
  """A `.model` file, or a directory holding tokenizer.model (local or gs://)."""
  candidate = paths.join(path, MODEL_FILE) if paths.isdir(path) else path
  if not paths.isfile(candidate):
    raise MissingFileError(
        f"no sentencepiece model at {path} (expected a .model file or a directory with {MODEL_FILE}); "
        "train one with `yijax tokenizer train --input=FILES --vocab_size=N --out=DIR`"
    )
  return candidate


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with paths.path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class Tokenizer:
  """A loaded sentencepiece model with its special ids."""

  def __init__(self, path: str):
    self.path = resolve_model_path(path)
    processor = _sp().SentencePieceProcessor()
    try:
      loaded = (processor.LoadFromSerializedProto(paths.path(self.path).read_bytes()) if paths.is_url(self.path)
                else processor.Load(self.path))
    except RuntimeError:
      loaded = False
    if not loaded:
      raise DataError(f"{self.path} is not a sentencepiece model (give a tokenizer.model written by `yijax tokenizer "
                      "train` or shipped with a Llama/Yi checkpoint)")
    self.processor = processor
    self.vocab_size = processor.GetPieceSize()
    self.bos_id = processor.bos_id()
    self.eos_id = processor.eos_id()
    self.unk_id = processor.unk_id()
    # a real pad id if the model has one, else <unk> (padding is masked out anyway)
    self.pad_id = processor.pad_id() if processor.pad_id() >= 0 else max(self.unk_id, 0)
    self.checksum = file_sha256(self.path)

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ids = self.processor.EncodeAsIds(text)
    return ([self.bos_id] if add_bos and self.bos_id >= 0 else []) + ids + (
        [self.eos_id] if add_eos and self.eos_id >= 0 else [])

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.processor.Encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    return self.processor.DecodeIds([int(i) for i in ids])

  def piece(self, token_id: int) -> str:
    return self.processor.IdToPiece(int(token_id))

  def byte_lengths(self):
    """UTF-8 bytes each token id stands for (numpy int32 [vocab]), for bits per byte:
    byte-fallback pieces are one byte, control/unknown/unused pieces none; with
    Yi's settings the bytes of a text's tokens add up to the bytes of the text."""
    import numpy as np

    lengths = np.zeros(self.vocab_size, np.int32)
    p = self.processor
    for i in range(self.vocab_size):
      if p.IsControl(i) or p.IsUnknown(i) or p.IsUnused(i):
        continue
      if p.IsByte(i):
        lengths[i] = 1
        continue
      lengths[i] = len(p.IdToPiece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths

  def meta(self) -> dict:
    return {"vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
            "pad_id": self.pad_id, "unk_id": self.unk_id, "sha256": self.checksum}

  def check_fits(self, model_vocab_size: int, field: str = "model.vocab_size") -> None:
    """A tokenizer larger than the model's embedding cannot work: say both sizes."""
    from yijax.errors import ConfigError

    if self.vocab_size > model_vocab_size:
      raise ConfigError(
          f"tokenizer {self.path} has {self.vocab_size} pieces but {field}={model_vocab_size}; "
          f"set --config.{field}={self.vocab_size} (or larger) or use a smaller tokenizer"
      )


def train_tokenizer(inputs: Sequence[str], vocab_size: int, out_dir: str,
                    max_sentence_length: int = 16384, input_sentence_size: int = 2_000_000,
                    character_coverage: float = 0.9999, num_threads: int = 2, seed: int = 0) -> Tokenizer:
  """Trains a BPE model with Yi's settings on text files; writes DIR/tokenizer.model + meta."""
  missing = [p for p in inputs if not os.path.isfile(p)]
  if missing:
    raise MissingFileError(f"tokenizer training input(s) not found: {missing}")
  model = io.BytesIO()
  if hasattr(_sp(), "set_random_generator_seed"):
    _sp().set_random_generator_seed(seed)
  try:
    _train(model, inputs, vocab_size, character_coverage, max_sentence_length, input_sentence_size, num_threads)
  except RuntimeError as e:  # sentencepiece's own message says what to change (e.g. a vocabulary too small)
    raise DataError(f"sentencepiece training of a {vocab_size}-piece tokenizer failed: "
                    f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MODEL_FILE)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  tokenizer = Tokenizer(path)
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(tokenizer.meta(), f, indent=2)
  return tokenizer


def _train(model, inputs, vocab_size, character_coverage, max_sentence_length, input_sentence_size, num_threads):
  _sp().SentencePieceTrainer.Train(
      input=list(inputs),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      split_digits=True,
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_by_whitespace=True,
      character_coverage=character_coverage,
      max_sentence_length=max_sentence_length,
      input_sentence_size=input_sentence_size,
      shuffle_input_sentence=True,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      bos_piece=BOS_PIECE, eos_piece=EOS_PIECE,
      num_threads=num_threads,
      minloglevel=2,
  )
