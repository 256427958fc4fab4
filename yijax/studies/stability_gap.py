"""Stages of the stability-gap study (experiments/stability_gap): its data, the gate on the start model, the report.

  prepare_data   synthetic worlds A/B (yijax/data/synthetic_worlds.py) + the embedded corpus ->
                 a tokenizer trained on them -> STAGE/prepared: pretraining sources, the domain
                 corpus (world B in the registry register) with quality scores and its selected
                 `domain_hq` subset, validation splits, STAGE/tasks/<task>.jsonl (QA of world A's
                 trained and held-out people and of world B's known and unknown halves); checks that
                 quality selection keeps the people the questions ask about and measures how full
                 packed rows of the domain are (epochs are counted in real tokens)
  evaluate_start the pretrained model scored by the arms' own evaluators (step 0 of every curve) and
                 the gate: the study stops here, with the numbers, when the start model cannot show
                 a dip (world-B known-half QA not clearly above chance, ...)
  analyze        the report: curves, the dip against the start band, recovery, peak, strategies
                 against the baseline at matched tokens, computed over seeds

All are `python` stages: fn(args, stage_dir, context) -> summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random

import numpy as np

from yijax import paths
from yijax.analysis import stats
from yijax.data import synthetic_worlds as worlds_lib
from yijax.errors import ConfigError, YijaxError
from yijax.studies import common

log = logging.getLogger(__name__)

PREPARED = "prepared"
TASKS = "tasks"
BASE_EVAL = "base_eval.json"
GATE = "gate.json"
# the QA task files the data stage writes, scored as tasks/<name>/acc
QA_TASKS = ("b_known_qa", "b_unknown_qa", "a_held_out_qa", "a_trained_qa")
CHOICES = 4


class GateFailed(YijaxError, RuntimeError):
  """The start model cannot show the effect the study looks for; the message names the numbers and the fix."""


def _write_jsonl(path: str, texts) -> str:
  paths.makedirs(paths.parent(path))
  paths.write_text(path, "".join(json.dumps({"text": t} if isinstance(t, str) else t, ensure_ascii=False) + "\n"
                                 for t in texts))
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


def _domain(worlds, args, tokenizer):
  """World-B registry biographies (some corrupted) adding up to about args.domain_tokens tokens."""
  probe, _, _ = worlds_lib.domain_texts(worlds, args.seed + 1, 400, args.corrupt_fraction)
  per_doc = np.mean([len(ids) for ids in tokenizer.encode_batch(probe)])
  count = max(len(worlds.world_b), int(math.ceil(args.domain_tokens / per_doc)))
  return worlds_lib.domain_texts(worlds, args.seed, count, args.corrupt_fraction)


def task_items(worlds, seed: int) -> dict[str, list[dict]]:
  """The QA items of each group: world B's known and unknown halves, world A's held-out people and as many
  of its trained people (the QA they were trained on, in new item order)."""
  groups = {"b_known_qa": worlds.b_known, "b_unknown_qa": worlds.b_unknown, "a_held_out_qa": worlds.a_held_out,
            "a_trained_qa": worlds.a_trained[:len(worlds.a_held_out)]}
  return {name: worlds_lib.qa_items(people, seed, name, CHOICES) for name, people in groups.items()}


def selection_coverage(kept: np.ndarray, kinds: list[str], who: list[int], worlds) -> dict:
  """How quality selection treats the people the questions ask about: the share of each half's people with at
  least one clean document kept, and the fewest clean documents kept for anyone."""
  clean_kept = np.zeros(len(worlds.world_b), int)
  for keep, kind, person in zip(kept, kinds, who):
    if keep and kind == "clean":
      clean_kept[person] += 1
  known, unknown = clean_kept[:worlds.b_known_count], clean_kept[worlds.b_known_count:]
  return {"people_covered": float(np.mean(clean_kept > 0)), "known_covered": float(np.mean(known > 0)),
          "unknown_covered": float(np.mean(unknown > 0)), "min_clean_docs": int(clean_kept.min()),
          "mean_clean_docs": float(clean_kept.mean()),
          "mean_clean_docs_known": float(known.mean()), "mean_clean_docs_unknown": float(unknown.mean())}


def packing_efficiency(prepared: str, source: str, seq_len: int, batch_size: int, batches: int = 8) -> float:
  """Real tokens / row slots of packed training batches of one source (the rest is padding)."""
  from yijax.data import pipeline

  data = pipeline.default_data_config()
  data.prepared_dir, data.sources = prepared, {source: 1.0}
  data.prefetch.batches = 0
  iterator = pipeline.train_iterator(data, seq_len, batch_size, seed=0)
  filled = [float(np.mean(next(iterator)["segment_ids"] != 0)) for _ in range(batches)]
  return float(np.mean(filled))


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: seed, world_a, world_b, reference, a_qa_fraction, b_known_fraction, a_bios_per_person,
  a_qa_per_person, b_intro_bios, domain_tokens, corrupt_fraction, hq_fraction (quality budget as a fraction of
  the domain tokens), min_hq_coverage (the least share of world-B people the selected subset must keep a clean
  document of), validation_per_person, vocab_size, embedded_max_docs (0 = all), tokenizer_embedded_mb,
  seq_len, batch_size (for the packing measurement)."""
  with common.local_stage_dir(stage_dir) as local:
    summary = _prepare_data(args, local)
  summary.update(tokenizer=paths.join(stage_dir, "tokenizer"), prepared=paths.join(stage_dir, PREPARED))
  return summary


def _prepare_data(args, stage_dir: str) -> dict:
  from yijax.data import pipeline, prepare, quality

  worlds = worlds_lib.build(args.seed, args.world_a, args.world_b, args.a_qa_fraction, args.b_known_fraction,
                            args.reference)
  texts = worlds_lib.pretraining_texts(worlds, args.seed, args.a_bios_per_person, args.a_qa_per_person,
                                       args.b_intro_bios)
  # the quality scorer's reference: curated clean domain text, as a real domain's reference shares its entities
  # (drug names, ...): records of the reference people and one clean record of each world-B person. Without
  # the latter the n-gram perplexity ranks people by how common their names' pieces are, and the selected
  # 10% kept a clean record of only a third of world B (measured; min_hq_coverage catches it)
  rng = random.Random(f"yijax-reference:{args.seed}")
  reference = [worlds_lib.biography(p, rng, register="registry")
               for p in [*worlds.reference, *worlds.reference, *worlds.world_b]]
  text_dir = os.path.join(stage_dir, "text")
  tokenizer = _tokenizer(stage_dir, sum(texts.values(), []) + reference, args.vocab_size,
                         args.tokenizer_embedded_mb)
  domain, kinds, who = _domain(worlds, args, tokenizer)
  per = args.validation_per_person
  validation = {
      "world_a_bios": worlds_lib.validation_texts(worlds.world_a, args.seed, "a"),
      "world_a_qa": [worlds_lib.qa_text(p, random.Random(f"qa-val:{i}")) for i, p in enumerate(worlds.a_trained)],
      "world_b_intro": worlds_lib.validation_texts(worlds.b_known, args.seed, "intro"),
      # held-out registry paraphrases of every world-B person, per half: the domain loss
      "domain": worlds_lib.validation_texts(worlds.world_b, args.seed, "b", "registry", per),
      "domain_known": worlds_lib.validation_texts(worlds.b_known, args.seed, "b-known", "registry", per),
      "domain_unknown": worlds_lib.validation_texts(worlds.b_unknown, args.seed, "b-unknown", "registry", per),
  }
  validation["domain_hq"] = validation["domain"]
  files = {("train", name): _write_jsonl(os.path.join(text_dir, f"{name}.train.jsonl"), t) for name, t in texts.items()}
  files["train", "domain"] = _write_jsonl(os.path.join(text_dir, "domain.train.jsonl"), domain)
  files.update({("validation", name): _write_jsonl(os.path.join(text_dir, f"{name}.validation.jsonl"), t)
                for name, t in validation.items()})
  reference_path = _write_jsonl(os.path.join(text_dir, "quality_reference.jsonl"), reference)
  out = os.path.join(stage_dir, PREPARED)
  embedded, fingerprint = prepare.embedded_specs(out, max_docs=args.embedded_max_docs or None)
  specs = [prepare.SourceSpec(name, split, (path,), "text", "jsonl") for (split, name), path in sorted(files.items())]
  plain = [s for s in specs if (s.split, s.name) != ("train", "domain")]
  prepare.prepare(embedded + plain, tokenizer.path, out, num_workers=1, progress=False,
                  corpus_fingerprint=fingerprint)
  lengths = np.array([len(ids) for ids in tokenizer.encode_batch(domain)])
  options = quality.QualityOptions(reference=(reference_path,), budget_tokens=int(args.hq_fraction * lengths.sum()))
  domain_spec = [s for s in specs if (s.split, s.name) == ("train", "domain")]
  manifest = prepare.prepare(domain_spec, tokenizer.path, out, num_workers=1, progress=False,
                             quality_options=options)
  if not manifest["complete"]:
    raise RuntimeError(f"preparing {out} did not complete; see its manifest.json")
  task_dir = os.path.join(stage_dir, TASKS)
  items = task_items(worlds, args.seed)
  for name, task in items.items():
    _write_jsonl(os.path.join(task_dir, f"{name}.jsonl"), task)
  manifest = pipeline.read_manifest(out)
  kept = quality.selection_mask(quality.read_scores(manifest, "train", "domain"), lengths, options.budget_tokens)
  corrupted = np.array([k != "clean" for k in kinds])
  coverage = selection_coverage(kept, kinds, who, worlds)
  summary = {
      "tokenizer": tokenizer.path, "prepared": out,
      "tokens": {f"{split}/{name}": entry["tokens"] for split, sources in manifest["splits"].items()
                 for name, entry in sources.items()},
      "people": {"a_trained": worlds.a_qa_count, "a_held_out": len(worlds.a_held_out),
                 "b_known": worlds.b_known_count, "b_unknown": len(worlds.b_unknown)},
      "items": {name: len(task) for name, task in items.items()},
      "domain_documents": len(domain), "corrupted_share_domain": float(corrupted.mean()),
      "corrupted_share_hq": float(corrupted[kept].mean()) if kept.any() else None,
      "hq_documents": int(kept.sum()), "hq_threshold": manifest["splits"]["train"]["domain"]["quality"]["threshold"],
      "corruption_kinds_dropped": {k: int(sum(1 for kind, keep in zip(kinds, kept) if kind == k and not keep))
                                   for k in ("shuffled", "noisy", "off_topic", "clean")},
      "hq_coverage": coverage,
      "packing": {name: packing_efficiency(out, name, args.seq_len, args.batch_size)
                  for name in ("domain", "domain_hq")},
  }
  log.info(json.dumps(summary, indent=1))
  if coverage["people_covered"] < args.min_hq_coverage:
    raise GateFailed(
        f"quality selection keeps a clean document of only {coverage['people_covered']:.0%} of world B's people "
        f"(known half {coverage['known_covered']:.0%}, unknown half {coverage['unknown_covered']:.0%}; "
        f"stages.data.args.min_hq_coverage={args.min_hq_coverage}): the high-quality arms could not learn the "
        "people the questions ask about. Raise --config.stages.data.args.hq_fraction or lower corrupt_fraction")
  return summary


def _chance_band(items: int, chance: float = 1 / CHOICES) -> float:
  return stats.binomial_se(chance, items)


def gate(results: dict, items: dict[str, int], args) -> dict:
  """Whether the start model can show a dip: world-A trained QA at least args.min_trained, world-A held-out QA and
  world-B known-half QA each at least args.min_sigmas binomial standard errors above chance (1/4)."""
  chance = 1 / CHOICES
  checks = {}
  for name, need in (("a_trained_qa", None), ("a_held_out_qa", "sigmas"), ("b_known_qa", "sigmas")):
    acc = results.get(f"tasks/{name}/acc")
    threshold = args.min_trained if need is None else chance + args.min_sigmas * _chance_band(items[name])
    checks[name] = {"acc": acc, "threshold": threshold, "passed": acc is not None and acc >= threshold}
  return {"passed": all(c["passed"] for c in checks.values()), "checks": checks,
          "b_unknown_qa": results.get("tasks/b_unknown_qa/acc"), "chance": chance}


def evaluate_start(args, stage_dir: str, context) -> dict:
  """args: model (the pretrained run dir), run (an arm's run config: its evaluators score step 0), items (task
  name -> item file), min_trained, min_sigmas, enforce. Writes base_eval.json and gate.json; GateFailed when the
  gate fails and args.enforce (the smoke scale records the verdict and goes on)."""
  from yijax.eval import dense
  from yijax.train import params_io

  model_config, params = params_io.load_model(args.model)
  results = {}
  for evaluator in dense.build(dense.evaluators_from_config(args.run),
                               dense.context_from_config(args.run, model_config)):
    results.update(evaluator(params, 0))
  results = {k: float(v) for k, v in results.items()}
  paths.write_text(paths.join(stage_dir, BASE_EVAL), json.dumps(results, indent=2, sort_keys=True))
  items = {name: _count_items(path) for name, path in dict(args["items"]).items()}
  verdict = gate(results, items, args)
  verdict["items"] = items
  paths.write_text(paths.join(stage_dir, GATE), json.dumps(verdict, indent=2, sort_keys=True))
  log.info(json.dumps(verdict, indent=1))
  if not verdict["passed"] and args.enforce:
    failed = {k: f"{c['acc']:.3f} < {c['threshold']:.3f}" for k, c in verdict["checks"].items() if not c["passed"]}
    raise GateFailed(
        f"the start model cannot show a stability gap: {failed} (accuracy < needed; {paths.join(stage_dir, GATE)}). "
        "No arm runs. Pretrain longer or on more world text (--config.study.pretrain_steps, "
        "--config.stages.data.args.b_intro_bios) and rerun the same command")
  return {"gate": verdict["passed"], **{k: round(v, 4) for k, v in results.items() if k.startswith("tasks/")}}


def _count_items(path: str) -> int:
  return sum(1 for line in paths.read_text(path).splitlines() if line.strip())


def prepare_paths(args, stage_dir: str, context) -> dict:
  """The paper-scale data from files: args.paths {tokenizer, domain, quality_reference, web, general,
  validation_domain, validation_web, validation_general} (JSONL / globs), args.hq_tokens (the budget of
  `domain_hq`)."""
  from yijax.data import prepare, quality

  files = dict(args.paths)
  missing = [k for k in ("tokenizer", "domain", "quality_reference", "web", "general", "validation_domain",
                         "validation_web", "validation_general") if not files.get(k)]
  if missing:
    raise ConfigError(f"stages.data.args.paths lacks {missing}; set --config.paths.<name>=PATH for each")
  with common.local_stage_dir(stage_dir) as local:
    out = os.path.join(local, PREPARED)
    split_of = {"validation_domain": ("validation", "domain"), "validation_web": ("validation", "web"),
                "validation_general": ("validation", "general")}
    specs = [prepare.parse_source(f"{name}={files[key]}", split) for key, (split, name) in split_of.items()]
    specs += [prepare.parse_source(f"domain_hq={files['validation_domain']}", "validation")]
    specs += [prepare.parse_source(f"{name}={files[name]}") for name in ("web", "general")]
    prepare.prepare(specs, files["tokenizer"], out, progress=False)
    options = quality.QualityOptions(reference=tuple(files["quality_reference"].split(",")),
                                     budget_tokens=int(args.hq_tokens))
    manifest = prepare.prepare([prepare.parse_source(f"domain={files['domain']}")], files["tokenizer"], out,
                               progress=False, quality_options=options)
  return {"prepared": paths.join(stage_dir, PREPARED),
          "tokens": {f"{s}/{n}": e["tokens"] for s, src in manifest["splits"].items() for n, e in src.items()}}


def analyze(args, stage_dir, context) -> dict:
  """The report stage (yijax/analysis/stability_gap.py): args.arms, args.keys, args.labels, args.items,
  args.baseline, args.strategies."""
  from yijax.analysis import stability_gap as gap_analysis

  base = paths.read_json(paths.join(context.stage_dir("start_eval"), BASE_EVAL), "start evaluation")
  gate_result = paths.read_json(paths.join(context.stage_dir("start_eval"), GATE), "gate")
  arms = {arm: context.stage_dirs(arm) for arm in args.arms}
  items = {name: _count_items(path) for name, path in dict(args["items"]).items()}
  data = context.summaries.get("data", {})
  extra = {"data": {k: v for k, v in data.items() if k not in ("tokenizer", "prepared")},
           "scale": context.study.get("scale"), "gate": gate_result,
           "domain_tokens": data.get("tokens", {}).get("train/domain"),
           "domain_hq_tokens": data.get("tokens", {}).get("train/domain_hq")}
  payload = gap_analysis.report(arms, base, dict(args["keys"]), items, context.workdir, dict(args.labels), extra,
                                baseline=args.baseline, strategies=list(args.strategies),
                                subset_fraction=args.get("subset_fraction", 0.1))
  return {"arms": list(payload["arms"]), "verdicts": {c["id"]: c["verdict"] for c in payload["claims"]}}
