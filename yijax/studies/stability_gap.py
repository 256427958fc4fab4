"""Stages of the stability-gap study (experiments/stability_gap): its data and the evaluation of the start model.

  prepare_data   synthetic worlds A/B (yijax/data/synthetic_worlds.py) + the embedded corpus ->
                 a tokenizer trained on them -> STAGE/prepared: pretraining sources, the domain
                 corpus with quality scores and its selected `domain_hq` subset, validation splits,
                 and STAGE/tasks/{domain_qa,general_qa}.jsonl
  evaluate_base  the pretrained model scored by the arms' own evaluators: step 0 of every curve

Both are `python` stages: fn(args, stage_dir, context) -> summary.
"""

from __future__ import annotations

import logging
import json
import math
import os
import random

import numpy as np

from yijax.data import synthetic_worlds as worlds_lib
from yijax.errors import ConfigError

log = logging.getLogger(__name__)

PREPARED = "prepared"
TASKS = "tasks"
BASE_EVAL = "base_eval.json"


def _write_jsonl(path: str, texts) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({"text": text} if isinstance(text, str) else text, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  return path


def _tokenizer(stage_dir: str, texts: list[str], vocab_size: int, embedded_mb: float):
  from yijax.data import corpus
  from yijax.data.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer

  out = os.path.join(stage_dir, "tokenizer")
  if not os.path.exists(os.path.join(out, MODEL_FILE)):
    sample = os.path.join(stage_dir, "tokenizer_sample.txt")
    corpus.sample_text(sample, int(embedded_mb * 2**20))
    with open(sample, "a", encoding="utf-8") as f:
      f.write("\n".join(texts) + "\n")
    train_tokenizer([sample], vocab_size, out)
    os.remove(sample)
  return Tokenizer(out)


def _domain(worlds, args, tokenizer) -> tuple[list[str], list[str]]:
  """World-B biographies (some corrupted) adding up to about args.domain_tokens tokens."""
  probe, _ = worlds_lib.domain_texts(worlds, args.seed + 1, 400, args.corrupt_fraction)
  per_doc = np.mean([len(ids) for ids in tokenizer.encode_batch(probe)])
  count = max(len(worlds.world_b), int(math.ceil(args.domain_tokens / per_doc)))
  return worlds_lib.domain_texts(worlds, args.seed, count, args.corrupt_fraction)


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: seed, world_a, world_b, reference, a_bios_per_person, domain_tokens, corrupt_fraction,
  hq_fraction (quality budget as a fraction of the domain tokens), vocab_size, embedded_max_docs
  (0 = all), tokenizer_embedded_mb."""
  from yijax.data import pipeline, prepare, quality

  worlds = worlds_lib.build(args.seed, args.world_a, args.world_b, reference=args.reference)
  texts = worlds_lib.pretraining_texts(worlds, args.seed, args.a_bios_per_person)
  reference = worlds_lib.validation_texts(worlds.reference, args.seed, "reference") + [
      worlds_lib.biography(p, random.Random(f"reference:{i}")) for i, p in enumerate(worlds.reference)]
  text_dir = os.path.join(stage_dir, "text")
  tokenizer = _tokenizer(stage_dir, sum(texts.values(), []) + reference, args.vocab_size,
                         args.tokenizer_embedded_mb)
  domain, kinds = _domain(worlds, args, tokenizer)
  validation = {
      "world_a_bios": worlds_lib.validation_texts(worlds.world_a, args.seed, "a"),
      "world_a_qa": [worlds_lib.qa_text(p, random.Random(f"qa-val:{i}"))
                     for i, p in enumerate(worlds.world_a[:worlds.a_qa_count])],
      "world_b_intro": worlds_lib.validation_texts(worlds.world_b[:worlds.b_intro_count], args.seed, "intro"),
      "domain": worlds_lib.validation_texts(worlds.world_b, args.seed, "b"),
  }
  validation["domain_hq"] = validation["domain"]
  paths = {("train", name): _write_jsonl(os.path.join(text_dir, f"{name}.train.jsonl"), t) for name, t in texts.items()}
  paths["train", "domain"] = _write_jsonl(os.path.join(text_dir, "domain.train.jsonl"), domain)
  paths.update({("validation", name): _write_jsonl(os.path.join(text_dir, f"{name}.validation.jsonl"), t)
                for name, t in validation.items()})
  reference_path = _write_jsonl(os.path.join(text_dir, "quality_reference.jsonl"), reference)
  out = os.path.join(stage_dir, PREPARED)
  embedded, fingerprint = prepare.embedded_specs(out, max_docs=args.embedded_max_docs or None)
  specs = [prepare.SourceSpec(name, split, (path,), "text", "jsonl") for (split, name), path in sorted(paths.items())]
  plain = [s for s in specs if (s.split, s.name) != ("train", "domain")]
  prepare.prepare(embedded + plain, tokenizer.path, out, num_workers=1, progress=False,
                  corpus_fingerprint=fingerprint)
  domain_tokens = sum(len(ids) for ids in tokenizer.encode_batch(domain))
  options = quality.QualityOptions(reference=(reference_path,), budget_tokens=int(args.hq_fraction * domain_tokens))
  domain_spec = [s for s in specs if (s.split, s.name) == ("train", "domain")]
  manifest = prepare.prepare(domain_spec, tokenizer.path, out, num_workers=1, progress=False,
                             quality_options=options)
  if not manifest["complete"]:
    raise RuntimeError(f"preparing {out} did not complete; see its manifest.json")
  task_dir = os.path.join(stage_dir, TASKS)
  _write_jsonl(os.path.join(task_dir, "domain_qa.jsonl"), worlds_lib.qa_items(worlds.world_b, args.seed, "domain_qa"))
  _write_jsonl(os.path.join(task_dir, "general_qa.jsonl"),
               worlds_lib.qa_items(worlds.world_a[worlds.a_qa_count:], args.seed, "general_qa"))
  manifest = pipeline.read_manifest(out)
  scores = quality.read_scores(manifest, "train", "domain")
  lengths = np.array([len(ids) for ids in tokenizer.encode_batch(domain)])
  kept = quality.selection_mask(scores, lengths, options.budget_tokens)
  corrupted = np.array([k != "clean" for k in kinds])
  summary = {
      "tokenizer": tokenizer.path, "prepared": out,
      "tokens": {f"{split}/{name}": entry["tokens"] for split, sources in manifest["splits"].items()
                 for name, entry in sources.items()},
      "domain_documents": len(domain), "corrupted_share_domain": float(corrupted.mean()),
      "corrupted_share_hq": float(corrupted[kept].mean()) if kept.any() else None,
      "hq_documents": int(kept.sum()), "hq_threshold": manifest["splits"]["train"]["domain"]["quality"]["threshold"],
      "corruption_kinds_dropped": {k: int(sum(1 for kind, keep in zip(kinds, kept) if kind == k and not keep))
                                   for k in ("shuffled", "noisy", "off_topic", "clean")},
  }
  log.info(json.dumps(summary, indent=1))
  return summary


def evaluate_base(args, stage_dir: str, context) -> dict:
  """args: model (the pretrained run dir), run (an arm's run config: its evaluators score step 0)."""
  from yijax.eval import dense
  from yijax.train import params_io

  model_config, params = params_io.load_model(args.model)
  results = {}
  for evaluator in dense.build(dense.evaluators_from_config(args.run),
                               dense.context_from_config(args.run, model_config)):
    results.update(evaluator(params, 0))
  results = {k: float(v) for k, v in results.items()}
  with open(os.path.join(stage_dir, BASE_EVAL), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  log.info(json.dumps({k: round(v, 4) for k, v in results.items()}))
  return results


def prepare_paths(args, stage_dir: str, context) -> dict:
  """The paper-scale data from files: args.paths {tokenizer, domain, quality_reference, web, general,
  validation_domain, validation_web, validation_general} (JSONL / globs), args.hq_tokens (the budget of
  `domain_hq`)."""
  from yijax.data import prepare, quality

  paths = dict(args.paths)
  missing = [k for k in ("tokenizer", "domain", "quality_reference", "web", "general", "validation_domain",
                         "validation_web", "validation_general") if not paths.get(k)]
  if missing:
    raise ConfigError(f"stages.data.args.paths lacks {missing}; set --config.paths.<name>=PATH for each")
  out = os.path.join(stage_dir, PREPARED)
  split_of = {"validation_domain": ("validation", "domain"), "validation_web": ("validation", "web"),
              "validation_general": ("validation", "general")}
  specs = [prepare.parse_source(f"{name}={paths[key]}", split) for key, (split, name) in split_of.items()]
  specs += [prepare.parse_source(f"domain_hq={paths['validation_domain']}", "validation")]
  specs += [prepare.parse_source(f"{name}={paths[name]}") for name in ("web", "general")]
  prepare.prepare(specs, paths["tokenizer"], out, progress=False)
  options = quality.QualityOptions(reference=tuple(paths["quality_reference"].split(",")),
                                   budget_tokens=int(args.hq_tokens))
  manifest = prepare.prepare([prepare.parse_source(f"domain={paths['domain']}")], paths["tokenizer"], out,
                             progress=False, quality_options=options)
  return {"prepared": out, "tokens": {f"{s}/{n}": e["tokens"] for s, src in manifest["splits"].items()
                                      for n, e in src.items()}}

def _items(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def analyze(args, stage_dir, context) -> dict:
  """The report stage: curves, dips, recoveries and peaks of every arm (yijax/analysis/stability_gap.py)."""
  from yijax.analysis import stability_gap as gap_analysis

  with open(os.path.join(context.stage_dir("base_eval"), BASE_EVAL)) as f:
    base = json.load(f)
  arms = {arm: context.stage_dir(arm) for arm in args.arms}
  items = {"domain_acc": _items(args.domain_items), "general_acc": _items(args.general_items)}
  data = context.summaries.get("data", {})
  extra = {"data": {k: v for k, v in data.items() if k not in ("tokenizer", "prepared")},
           "scale": context.study.get("scale")}
  payload = gap_analysis.report(arms, base, dict(args["keys"]), items, context.workdir, dict(args.labels), extra)
  return {"arms": list(payload["arms"]),
          "gaps": {arm: r.get("domain_acc", {}).get("gap") for arm, r in payload["arms"].items()}}
