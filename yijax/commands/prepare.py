"""yijax prepare --source=NAME=PATH_OR_GLOB [--source=...] | --source=embedded --tokenizer=PATH --out=DIR"""

from __future__ import annotations

import os

from absl import flags

from yijax.cli import UsageError


def define_flags(fv, argv):
  flags.DEFINE_multi_string(
      "source", [], "NAME=PATH_OR_GLOB[,PATH...] (text files: one document per file; .jsonl: one per line), "
      "NAME=tfds:DATASET[/CONFIG][:VERSION]:SPLIT, or `embedded` (Python's docs and stdlib, both splits)",
      flag_values=fv)
  flags.DEFINE_boolean("embedded", False, "also prepare the embedded corpus (same as --source=embedded)",
                       flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "sentencepiece .model file or a directory holding tokenizer.model",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output directory (rerun the same command to finish an interrupted job)",
                      flag_values=fv)
  flags.DEFINE_string("split", "train", "split the --source inputs belong to (embedded: always both)", flag_values=fv)
  flags.DEFINE_string("text_field", "text", "JSONL / TFDS field holding the document text", flag_values=fv)
  flags.DEFINE_string("format", "auto", "auto (.jsonl/.ndjson/.json are JSONL, the rest text) | text | jsonl",
                      flag_values=fv)
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir of ArrayRecord-format datasets", flag_values=fv)
  flags.DEFINE_integer("num_workers", None, "tokenizer processes (default: the CPU count)", flag_values=fv)
  flags.DEFINE_integer("shard_mb", None, "input MiB per shard for a new plan (default: ~4 shards per worker, "
                       "1-256 MiB)", flag_values=fv)
  flags.DEFINE_integer("tfds_docs_per_shard", 100_000, "TFDS examples per shard", flag_values=fv)
  flags.DEFINE_list("quality_reference", [], "quality selection: clean reference corpus (text files / JSONL, globs) "
                    "the built-in n-gram scorer is trained on; every --source is scored", flag_values=fv)
  flags.DEFINE_integer("quality_budget_tokens", 0, "keep each scored source's lowest-perplexity documents up to "
                       "this many tokens, written as source NAME_hq", flag_values=fv)
  flags.DEFINE_string("kenlm_model", "", "score with this KenLM model (needs the kenlm module) instead of the "
                      "n-gram scorer", flag_values=fv)
  flags.DEFINE_integer("quality_order", 3, "n-gram order of the built-in scorer", flag_values=fv)
  flags.DEFINE_string("quality_suffix", "_hq", "the selected documents become source NAME+suffix", flag_values=fv)


def _report(manifest: dict) -> None:
  print(f"{'split':<11} {'source':<16} {'documents':>10} {'tokens':>13} {'shards':>7}  problems")
  for split, sources in manifest["splits"].items():
    for name, entry in sources.items():
      problems = [f"{entry[k]} {k.replace('_', ' ')}" for k in (
          "empty_documents", "invalid_utf8_documents", "invalid_json_lines", "missing_text_field")
          if entry.get(k)]
      problems += [f"unreadable {u['path']} ({u['error']})" for u in entry.get("unreadable_files", [])]
      problems += [f"FAILED {u['shard']}: {u['error']}" for u in entry.get("failed_units", [])]
      print(f"{split:<11} {name:<16} {entry.get('documents', 0):>10,} {entry.get('tokens', 0):>13,} "
            f"{len(entry.get('shards', [])):>7}  {'; '.join(problems) or '-'}")


def _quality_options(fv):
  """QualityOptions when any --quality_* / --kenlm_model flag is given, else None."""
  from yijax.data import quality

  if not (fv.quality_reference or fv.quality_budget_tokens or fv.kenlm_model):
    return None
  options = quality.QualityOptions(tuple(fv.quality_reference), fv.quality_budget_tokens, fv.kenlm_model,
                                   fv.quality_order, suffix=fv.quality_suffix, text_field=fv.text_field)
  try:
    options.check()
  except ValueError as e:
    raise UsageError(str(e)) from None
  return options


def run(fv, args):
  from yijax.data import prepare

  if args:
    raise UsageError(f"unexpected arguments {args}; inputs go in --source=NAME=PATH")
  if not fv.tokenizer:
    raise UsageError("--tokenizer is required (train one with `yijax tokenizer train`)")
  if not fv.out:
    raise UsageError("--out is required")
  from yijax import paths

  paths.check_output_dir(fv.out, "--out")
  values = [s for s in fv.source if s != "embedded"]
  embedded = fv.embedded or len(values) < len(fv.source)
  if not values and not embedded:
    raise UsageError("give --source=NAME=PATH_OR_GLOB (repeatable), --source=NAME=tfds:DATASET:SPLIT "
                     "or --source=embedded")
  specs = [prepare.parse_source(v, fv.split, fv.text_field, fv.format, fv.tfds_data_dir) for v in values]
  merged = {}
  for spec in specs:  # the same NAME given twice: one source with both inputs
    old = merged.get(spec.name)
    merged[spec.name] = spec if old is None else prepare.SourceSpec(
        spec.name, spec.split, old.inputs + spec.inputs, spec.text_field, spec.file_format, spec.tfds_data_dir)
  specs, fingerprint = list(merged.values()), None
  if embedded:
    embedded_specs, fingerprint = prepare.embedded_specs(fv.out)
    specs += embedded_specs
  options = _quality_options(fv)
  if options is not None and not merged:
    raise UsageError("quality selection scores the --source=NAME=PATH sources; give at least one")
  manifest = prepare.prepare(specs, fv.tokenizer, fv.out, num_workers=fv.num_workers,
                             shard_bytes=fv.shard_mb << 20 if fv.shard_mb else None,
                             tfds_docs_per_shard=fv.tfds_docs_per_shard, corpus_fingerprint=fingerprint,
                             quality_options=options, quality_sources=list(merged))
  _report(manifest)
  run_info = manifest["last_run"]
  for split, sources in manifest["splits"].items():
    for name, entry in sources.items():
      q = entry.get("quality")
      if q and "selected_source" in q:
        print(f"quality: {split}/{name} -> {q['selected_source']}: kept {q['kept_documents']:,} of "
              f"{q['scored_documents']:,} documents ({q['kept_tokens']:,} tokens), threshold {q['threshold']}")
  print(f"{run_info['units_run']} units run, {run_info['units_skipped']} already done, "
        f"{run_info['seconds']:.1f} s; manifest: {os.path.join(fv.out, prepare.MANIFEST)}")
  if not manifest["complete"]:
    print("incomplete: rerun the same command to finish (failed units are listed above)")
    return 1
  return 0

