"""The pretraining text of the synthetic tasks, written as prepared sources a study mixes in.

`pretraining_sources(out_dir, tokenizer_path, seed)` tokenizes the facts
text and the arith worked examples with the run's tokenizer and writes them
into a prepared directory (`write_token_source`) as sources `facts` and
`arith` of split `train`, plus a small `validation` split of each (facts
stated once more in a paraphrase never trained on; arith worked examples
from the eval side of the pair split), so a run's held-out evaluation, which
reads every mixture source's validation split, keeps working.

Typical study setup: `prepare_embedded(DIR, vocab)` then
`pretraining_sources(DIR, DIR/tokenizer, seed)` and
`data.sources = with_shares({"python_code": .7, "python_docs": .3},
{"facts": .01, "arith": .02})`. The pipeline repeats a source once it is
exhausted, so a fact of group k is seen k times per pass over `facts`: for
the counts to mean k exactly, size its share so the run reads the source
about once (its tokens are in the manifest: splits/train/facts/tokens).
"""

from __future__ import annotations

import os
from typing import Mapping

from yijax.errors import ConfigError
from yijax.eval.tasks import synthetic

FACTS_SOURCE = "facts"
ARITH_SOURCE = "arith"


def _write(out_dir: str, tokenizer, split: str, name: str, texts: list[str]) -> None:
  from yijax.data.prepare import write_token_source

  meta = dict(tokenizer.meta(), path=os.path.abspath(tokenizer.path))
  write_token_source(out_dir, split, name, tokenizer.encode_batch(texts), meta)


def pretraining_sources(out_dir: str, tokenizer_path: str, seed: int, facts: bool = True, arith: bool = True,
                        facts_k=synthetic.FACTS_K, facts_per_group: int = 20, arith_examples: int = 20_000,
                        validation: bool = True) -> list[str]:
  """Writes the facts / arith text as prepared sources of `out_dir`; returns the source names written.

  `seed`, `facts_k` and `facts_per_group` define the fact set: evaluate
  `facts` with the same values. The arith text never holds an evaluation
  item, whatever the seeds (see synthetic.arith_side).
  """
  from yijax.data.tokenizer import Tokenizer

  if not facts and not arith:
    raise ConfigError("pretraining_sources: facts=False and arith=False leave nothing to write")
  if arith_examples < 1:
    raise ConfigError(f"arith_examples={arith_examples} must be >= 1")
  tokenizer = Tokenizer(tokenizer_path)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  if facts:
    _write(out_dir, tokenizer, "train", FACTS_SOURCE, synthetic.facts_documents(seed, facts_k, facts_per_group))
    if validation:
      _write(out_dir, tokenizer, "validation", FACTS_SOURCE,
             synthetic.facts_documents(seed, facts_k, facts_per_group, held_out_template=True))
    written.append(FACTS_SOURCE)
  if arith:
    _write(out_dir, tokenizer, "train", ARITH_SOURCE, synthetic.arith_documents(seed, arith_examples))
    if validation:
      _write(out_dir, tokenizer, "validation", ARITH_SOURCE,
             synthetic.arith_documents(seed, max(arith_examples // 20, 64), side="eval"))
    written.append(ARITH_SOURCE)
  return written


def with_shares(base: Mapping[str, float], added: Mapping[str, float]) -> dict[str, float]:
  """A mixture with `added` sources at their token shares and `base` scaled to fill the rest.

  with_shares({"python_code": .7, "python_docs": .3}, {"arith": .02}) ->
  {"python_code": .686, "python_docs": .294, "arith": .02}.
  """
  extra = sum(added.values())
  if not 0 <= extra < 1 or any(v < 0 for v in added.values()):
    raise ConfigError(f"added shares {dict(added)} must be >= 0 and sum to less than 1")
  total = sum(base.values())
  if total <= 0:
    raise ConfigError(f"base mixture {dict(base)} has no positive weight")
  return {**{k: v / total * (1 - extra) for k, v in base.items()}, **dict(added)}
