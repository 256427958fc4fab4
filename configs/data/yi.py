"""`yijax curate`: Yi's cascaded filtering and deduplication (arXiv 2403.04652, section 2), stage by stage.

Stages run in Yi's order: heuristic rules -> language identification -> learned scorers -> deduplication
(exact, near-duplicate MinHash LSH, sub-document spans) -> optional cluster filtering. Every field is
overridable: `yijax curate --config=configs/data/yi.py --config.dedup.near.jaccard=0.8`. A threshold of
None (or a rule set to None) turns that rule off. Paths (blocklists, models, reference corpora) are
never downloaded: give a file or leave "" to skip the stage (the report says so).
"""

import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()

  c.input = ml_collections.ConfigDict()
  c.input.text_field = "text"  # JSONL / TFDS field with the document text
  c.input.id_field = "id"  # JSONL / TFDS field with the document id (else PATH#LINE, stable across runs)
  c.input.format = "auto"  # auto (.jsonl/.ndjson/.json are JSONL, the rest one document per file) | text | jsonl
  c.input.tfds_data_dir = ""
  c.input.shard_mb = 64  # input MiB per task (a JSONL file is split at line boundaries)
  c.input.tfds_docs_per_shard = 100_000
  c.input.max_document_bytes = 8 << 20  # larger documents (huge single lines) are removed as `too_large`
  c.input.max_binary_ratio = 0.1  # text files with NUL bytes or more control bytes than this are `binary`
  c.input.keep_fields = ("url", "dup_of", "edit_rate")  # JSONL fields carried through (reports, planted truth)

  c.heuristics = ml_collections.ConfigDict()
  c.heuristics.enabled = True
  c.heuristics.min_chars = 200  # document length
  c.heuristics.max_chars = 1_000_000
  g = c.heuristics.gopher = ml_collections.ConfigDict()  # datatrove GopherQualityFilter (Rae et al. 2021)
  g.enabled = True
  g.min_doc_words = 50
  g.max_doc_words = 100_000
  g.min_avg_word_length = 3
  g.max_avg_word_length = 10
  g.max_symbol_word_ratio = 0.1
  g.max_bullet_lines_ratio = 0.9
  g.max_ellipsis_lines_ratio = 0.3
  g.max_non_alpha_words_ratio = 0.8
  g.min_stop_words = 2
  r = c.heuristics.repetition = ml_collections.ConfigDict()  # datatrove GopherRepetitionFilter
  r.enabled = True
  r.dup_line_frac = 0.3
  r.dup_para_frac = 0.3
  r.dup_line_char_frac = 0.2
  r.dup_para_char_frac = 0.2
  r.top_n_grams = ((2, 0.2), (3, 0.18), (4, 0.16))
  r.dup_n_grams = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
  f = c.heuristics.lines = ml_collections.ConfigDict()  # datatrove FineWebQualityFilter: short / incomplete lines
  f.enabled = True
  f.line_punct_thr = 0.12  # remove when fewer lines end in terminal punctuation
  f.short_line_thr = 0.67  # remove when more lines are shorter than short_line_length
  f.short_line_length = 30
  f.char_duplicates_ratio = 0.01
  f.new_line_ratio = 0.3
  c.heuristics.url_blocklist = ""  # file: one domain per line; documents whose `url` or text links match go
  c.heuristics.word_blocklist = ""  # file: one word or phrase per line
  c.heuristics.max_blocked_words = 0  # remove when more distinct blocklisted words occur
  c.heuristics.max_garbled_ratio = 0.02  # U+FFFD, control / private-use characters and mojibake per character

  c.langid = ml_collections.ConfigDict()
  c.langid.model = ""  # fastText lid.176.bin / .ftz by path; "" = stage skipped
  c.langid.languages = ("en", "zh")
  c.langid.min_score = 0.65

  c.learned = ml_collections.ConfigDict()
  c.learned.reference = ""  # clean reference corpus (files / globs, comma-separated); "" = skip ppl + classifier
  c.learned.calibration_docs = 2000  # input documents sampled (classifier negatives, keep-fraction thresholds)
  c.learned.seed = 0
  p = c.learned.perplexity = ml_collections.ConfigDict()  # yijax.data.quality.NgramModel over hashed words
  p.enabled = True
  p.order = 3
  p.hash_buckets = 1 << 18
  p.max_log_ppl = None  # remove above this (nats per word), or
  p.keep_fraction = 0.9  # ... keep this fraction of the calibration sample's lowest perplexities
  q = c.learned.classifier = ml_collections.ConfigDict()  # fastText: reference (hq) vs sampled input (web)
  q.enabled = True
  q.epoch = 20
  q.lr = 0.5
  q.dim = 32
  q.word_ngrams = 2
  q.min_score = None  # remove below this P(reference), or
  q.keep_fraction = 0.9
  h = c.learned.coherence = ml_collections.ConfigDict()  # adjacent-paragraph lexical cosine
  h.enabled = True
  h.min_score = 0.05
  h.keep_fraction = None

  c.dedup = ml_collections.ConfigDict()
  c.dedup.exact = True  # normalized (case, whitespace) document hash
  n = c.dedup.near = ml_collections.ConfigDict()  # datatrove MinHash LSH + a Jaccard check of each candidate pair
  n.enabled = True
  n.shingle_words = 5
  n.bands = 14
  n.rows = 8  # permutations = bands * rows
  n.jaccard = 0.7  # candidate pairs whose estimated Jaccard is below this are not duplicates
  n.seed = 1
  s = c.dedup.subdoc = ml_collections.ConfigDict()  # datatrove SentenceDedup over lines
  s.enabled = True
  s.span_lines = 3  # spans of this many consecutive lines seen elsewhere in the corpus are removed
  s.min_doc_words = 50  # documents left shorter than this are removed
  s.min_lines = 3

  c.clusters = ml_collections.ConfigDict()
  c.clusters.enabled = False
  c.clusters.num_clusters = 16
  c.clusters.dim = 64  # SVD dimension of the hashed tf-idf embedding
  c.clusters.max_docs = 200_000  # documents sampled to fit the clustering
  c.clusters.drop = ()  # cluster ids to remove (read them in report.md), e.g. --config.clusters.drop=(3,7)
  c.clusters.seed = 0

  c.evaluation = ml_collections.ConfigDict()
  c.evaluation.truth_field = "dup_of"  # planted truth: the id of the original a document copies
  c.evaluation.samples_per_rule = 3

  c.executor = ml_collections.ConfigDict()
  c.executor.kind = "local"  # local | slurm
  c.executor.workers = 2  # local processes
  c.executor.start_method = "forkserver"  # of the local process pool (datatrove's default; "fork" starts faster)
  c.executor.dedup_tasks = 1  # finder tasks of the exact / sub-document hash ranges
  c.executor.slurm_partition = ""
  c.executor.slurm_time = "24:00:00"
  c.executor.slurm_cpus_per_task = 1
  c.executor.slurm_mem_per_cpu_gb = 2
  c.executor.slurm_env_command = ""  # e.g. "source ~/venv/bin/activate"
  return c
