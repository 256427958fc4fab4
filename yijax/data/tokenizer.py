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
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")  # ChatML's turn markers (Yi's chat models)


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
                    character_coverage: float = 0.9999, num_threads: int = 2, seed: int = 0,
                    user_defined_symbols: Sequence[str] = ()) -> Tokenizer:
  """Trains a BPE model with Yi's settings on text files; writes DIR/tokenizer.model + meta.
  user_defined_symbols: strings that are always one token (ids 3.., after unk/bos/eos), e.g. CHAT_TOKENS."""
  missing = [p for p in inputs if not os.path.isfile(p)]
  if missing:
    raise MissingFileError(f"tokenizer training input(s) not found: {missing}")
  model = io.BytesIO()
  if hasattr(_sp(), "set_random_generator_seed"):
    _sp().set_random_generator_seed(seed)
  try:
    _train(model, inputs, vocab_size, character_coverage, max_sentence_length, input_sentence_size, num_threads,
           list(user_defined_symbols))
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


def _train(model, inputs, vocab_size, character_coverage, max_sentence_length, input_sentence_size, num_threads,
           user_defined_symbols=()):
  extra = {"user_defined_symbols": user_defined_symbols} if user_defined_symbols else {}
  _sp().SentencePieceTrainer.Train(
      **extra,
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


def add_chat_tokens(path: str, out_dir: str, pieces: Sequence[str] = CHAT_TOKENS) -> Tokenizer:
  """A copy of a tokenizer in which each of `pieces` is one token: a piece it lacks takes over the id of its
  last (rarest) ordinary piece, so the vocabulary size, and with it a trained model's embedding, stays the same
  (those ids' rows are then learned by fine-tuning, as Yi's reserved tokens are). Writes DIR/tokenizer.model
  + meta; a tokenizer that already has them is copied unchanged."""
  from sentencepiece import sentencepiece_model_pb2 as model_pb2

  source = Tokenizer(path)
  proto = model_pb2.ModelProto()
  proto.ParseFromString(paths.path(source.path).read_bytes())
  existing = {p.piece: i for i, p in enumerate(proto.pieces)}
  missing = [p for p in pieces if len(source.encode(p)) != 1 and p not in existing]
  normal = [i for i, p in enumerate(proto.pieces) if p.type == model_pb2.ModelProto.SentencePiece.NORMAL]
  if len(missing) > len(normal):
    raise DataError(f"{source.path} has too few ordinary pieces to hold {missing}")
  for piece, index in zip(missing, reversed(normal)):
    proto.pieces[index].piece = piece
    proto.pieces[index].type = model_pb2.ModelProto.SentencePiece.USER_DEFINED
    proto.pieces[index].score = 0.0
  for piece in pieces:  # present but split (not user defined): make it one
    if piece in existing and len(source.encode(piece)) != 1:
      proto.pieces[existing[piece]].type = model_pb2.ModelProto.SentencePiece.USER_DEFINED
  os.makedirs(out_dir, exist_ok=True)
  target = os.path.join(out_dir, MODEL_FILE)
  with open(target + ".tmp", "wb") as f:
    f.write(proto.SerializeToString())
  os.replace(target + ".tmp", target)
  tokenizer = Tokenizer(target)
  bad = [p for p in pieces if len(tokenizer.encode(p)) != 1]
  if bad:
    raise DataError(f"{target}: {bad} still do not encode to one token")
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(tokenizer.meta(), f, indent=2)
  return tokenizer
