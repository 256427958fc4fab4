"""Machine unlearning of pretrained language models (Yao et al., ACL 2024; arXiv 2402.15159).

  objectives.py  the seven methods as train objectives (ascent, random / adversarial labels,
                 ascent + descent, ascent + KL to the original model)
  methods.py     the method table: objective, paired retain source, reference model
  evaluate.py    sequence-weighted perplexity, accuracy, Min-K% membership inference, FLOPs
  splits.py      forget / approximate / retain / general sets (embedded corpus or JSONL paths)
  study.py       the stages of experiments/unlearning (data, evaluation, report)
"""
