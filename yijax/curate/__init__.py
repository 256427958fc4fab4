"""`yijax curate`: Yi's cascaded data filtering and deduplication, on datatrove's executors.

inputs.py (planning, reading, bad input), text.py (words, normalization, garbling, coherence),
rules.py (heuristic and learned filters as datatrove steps), scorers.py (training the learned
scorers), dedup.py (exact, MinHash, sub-document), clusters.py, pipeline.py (the stages and
executors), report.py (report.json / report.md / PNGs, dedup precision and recall), planted.py
(a corpus with planted duplicates at known edit rates).
"""
