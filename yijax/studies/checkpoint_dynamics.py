"""Stages of the checkpoint-dynamics study (Yang et al., "The Fine Line", arXiv 2404.01204).

  prepare_data      the embedded corpus + the battery's facts / arith teaching text as prepared sources
  evaluate_run      the whole battery on every kept checkpoint of a train stage (resumable; eval/checkpoints.py)
  report            curves, Spearman matrix, lagged correlation, normalised curves, loss decoupling
                    (yijax/analysis/dynamics.py) -> results.json, report.md, PNGs in the workdir

experiments/checkpoint_dynamics/config.py wires them; at `paper` scale
`evaluate_run` reads a directory of converted released checkpoints instead of a
train stage, with benchmark JSONL files as extra tasks.
"""

from __future__ import annotations

import json
import os

import numpy as np

from yijax import paths
from yijax.analysis import stats
from yijax.studies import common

# the metric each task contributes to the cross-task analysis (higher is better after dynamics.ability)
PRIMARY = {"bpb_docs": "bits_per_byte", "bpb_code": "bits_per_byte", "cloze_docs": "acc", "cloze_code": "acc",
           "arith": "acc", "induction": "acc", "facts": "acc"}
LOSS_TASKS = ("bpb_docs", "bpb_code")  # their `loss` metrics (nats/token on held-out text) = validation loss
TASK_INFO = "task_info.json"


def prepare_data(args, stage_dir: str, context) -> dict:
  """args: vocab_size, sample_mb, seed, facts_per_group, arith_examples, from_dir ("" = prepare the
  embedded corpus here; a prepared embedded dir is copied, never written to). Prepared in a local directory
  and copied up when the stage dir is a gs:// URL."""
  from yijax.data import prepare
  from yijax.eval.tasks import pretraining

  with common.local_stage_dir(stage_dir) as local:
    out = os.path.join(local, "prepared")
    if args.get("from_dir"):
      if not os.path.exists(os.path.join(out, "tokenizer")):
        paths.copy_tree(args.from_dir, out)
    else:
      prepare.prepare_embedded(out, int(args.vocab_size), sample_mb=float(args.sample_mb), progress=False)
    written = pretraining.pretraining_sources(out, os.path.join(out, "tokenizer"), int(args.seed),
                                              facts_per_group=int(args.facts_per_group),
                                              arith_examples=int(args.arith_examples))
  return {"prepared_dir": paths.join(stage_dir, "prepared"), "sources_added": written}


def evaluate_run(args, stage_dir: str, context) -> dict:
  """args: run (a train stage's dir or a dir of converted checkpoints), tasks (+ extra_tasks: JSONL paths),
  seed, options, tokenizer ("" = each checkpoint's own)."""
  from yijax.eval import checkpoints
  from yijax.models.config import ConfigError

  if not paths.isdir(args.run):
    raise ConfigError(f"no checkpoints at {args.run}: give the run dir or the directory of converted checkpoints "
                      "(--config.paths.checkpoints=DIR at paper scale)")
  extra = args.get("extra_tasks") or []
  tasks = list(args.tasks) + ([t for t in extra.split(",") if t] if isinstance(extra, str) else list(extra))
  missing = [t for t in tasks if t.endswith(".jsonl") and not os.path.exists(t)]
  if missing:
    raise ConfigError(f"benchmark files not found: {missing} (--config.paths.benchmarks)")
  out = paths.join(stage_dir, checkpoints.RESULTS)
  options = args.options.to_dict() if hasattr(args.options, "to_dict") else dict(args.get("options") or {})
  checkpoints.evaluate_checkpoints(args.run, tasks, out_path=out, seed=int(args.seed),
                                   tokenizer_path=args.get("tokenizer") or None, options=options)
  records = checkpoints.load_results(out)
  paths.write_text(paths.join(stage_dir, TASK_INFO), json.dumps(task_info(tasks, int(args.seed), options), indent=2))
  return {"records": len(records), "checkpoints": len({r["checkpoint"] for r in records})}


def task_info(tasks: list[str], seed: int, options: dict) -> dict:
  """{task: {"chance", "num_items"}} of the accuracy tasks, for the noise bands of the report (binomial
  se of an accuracy on num_items items; induction: chance 0, one item per sequence)."""
  from yijax.eval import tasks as task_lib

  info = {}
  for name in tasks:
    if name.startswith("bpb_"):
      continue
    if name == "induction":
      info[name] = {"chance": 0.0, "num_items": int(options.get("num_sequences", 64))}
      continue
    task = task_lib.build_task(name, seed=seed, _lenient=True, **options)
    if task.kind == "multiple_choice":
      info[name] = {"chance": task.chance, "num_items": len(task.items)}
  return info


def _loss_trajectory(trajs: dict) -> np.ndarray | None:
  """Held-out loss per checkpoint: the mean `loss` of the bpb tasks present."""
  parts = [trajs[(t, "loss")] for t in LOSS_TASKS if (t, "loss") in trajs]
  if not parts:
    return None
  m = min(len(p) for p in parts)
  out = parts[0][:m].copy()
  out[:, 3] = np.mean([p[:m, 3] for p in parts], axis=0)
  return out


def _fmt(x, digits=3) -> str:
  return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def report(args, stage_dir: str, context) -> dict:
  """args: sizes {label: eval stage name}, params {label: parameter count}. Writes into the workdir."""
  from yijax.analysis import dynamics
  from yijax.eval import checkpoints

  workdir = context.workdir
  by_size, loss_by_size = {}, {}
  for label, stage in args.sizes.items():
    records = checkpoints.load_results(paths.join(context.stage_dir(stage), checkpoints.RESULTS))
    by_size[label] = dynamics.trajectories(records)
    loss_by_size[label] = _loss_trajectory(by_size[label])
  params = {label: int(args.params.get(label, 0)) for label in by_size}
  labels = sorted(by_size, key=lambda label: params[label])  # smallest first
  by_size = {label: by_size[label] for label in labels}
  largest = labels[-1]
  primary = lambda trajs: [(t, m) for t, m in PRIMARY.items() if (t, m) in trajs] + sorted(  # noqa: E731
      (t, m) for t, m in trajs if t not in PRIMARY and m == "acc")  # JSONL benchmarks given by path

  shown = {label: {k: v for k, v in trajs.items() if k in primary(trajs) or k[1] in ("acc_k1", "acc_k16")}
           for label, trajs in by_size.items()}  # the primary metrics, and facts seen once vs 16 times
  dynamics.plot_curves(shown, paths.join(workdir, "curves_tokens.png"), x="tokens")
  dynamics.plot_curves(shown, paths.join(workdir, "curves_flops.png"), x="flops")
  info = {}
  for stage in args.sizes.values():
    path = paths.join(context.stage_dir(stage), TASK_INFO)
    if paths.exists(path):
      info.update(paths.read_json(path, "the task info"))

  def noise(key, trajs) -> float:
    """se of one evaluation: binomial for an accuracy on N items; 0 for bits per byte of a fixed text."""
    if key[0] not in info or not key[1].startswith("acc"):
      return 0.0
    return stats.binomial_se(float(np.mean(trajs[key][:, 3])), info[key[0]]["num_items"])

  results: dict = {"sizes": {}, "distances": {}, "timing": {}, "lags": {}, "decoupling": {}, "across_sizes": {},
                   "task_info": info}
  for label in labels:
    trajs = by_size[label]
    keys = primary(trajs)
    se = {k: noise(k, trajs) for k in keys}
    names, matrix, summary = dynamics.distance_matrix(trajs, keys, se)
    results["distances"][label] = summary
    if label == largest:
      dynamics.plot_matrix(names, matrix, paths.join(workdir, "distances.png"),
                           f"RMS distance between gain-fraction curves ({label})", vmax=0.5)
      results["distance_matrix"] = {"keys": [f"{t}/{m}" for t, m in names],
                                    "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix]}
    final = {f"{t}/{m}": float(trajs[(t, m)][-1, 3]) for t, m in keys}
    first = {f"{t}/{m}": float(trajs[(t, m)][0, 3]) for t, m in keys}
    loss = loss_by_size[label]
    results["sizes"][label] = {"params": params[label], "checkpoints": int(len(trajs[keys[0]])),
                               "tokens": float(trajs[keys[0]][-1, 1]), "flops": float(trajs[keys[0]][-1, 2]),
                               "first": first, "final": final,
                               "loss_first": None if loss is None else float(loss[0, 3]),
                               "loss_final": None if loss is None else float(loss[-1, 3])}
    results["timing"][label] = {
        f"{t}/{m}": {"leave_chance": (dynamics.tokens_to_leave_chance(trajs[(t, m)], info[t]["chance"], se[(t, m)])
                                      if t in info and m == "acc" else None),
                     "half_gain": dynamics.tokens_to_half_gain(trajs[(t, m)], se[(t, m)], (t, m))}
        for t, m in keys}
    if loss is not None:
      results["decoupling"][label] = {
          f"{t}/{m}": dynamics.loss_decoupling(loss, trajs[(t, m)], (t, m), metric_se=se[(t, m)])
          for t, m in keys if t not in LOSS_TASKS}
  # which domain moves first (largest size): lagged correlation of per-checkpoint changes
  trajs = by_size[largest]
  keys = primary(trajs)
  for i, a in enumerate(keys):
    for b in keys[i + 1:]:
      if dynamics.domain_of(a[0]) == dynamics.domain_of(b[0]):
        continue
      lag = dynamics.lagged_correlation(dynamics.ability(a, trajs[a][:, 3]), dynamics.ability(b, trajs[b][:, 3]))
      results["lags"][f"{a[0]} vs {b[0]}"] = {"best_lag": lag["best_lag"], "correlation": lag["correlation"]}
  # do trajectories look alike across sizes? mean distance between the sizes' gain-fraction curves
  for key in keys:
    curves = [(by_size[s][key], noise(key, by_size[s])) for s in labels if key in by_size[s]]
    pairs = [dynamics.curve_distance(curves[i][0], curves[j][0], curves[i][1], curves[j][1], key)
             for i in range(len(curves)) for j in range(i + 1, len(curves))]
    finite = [p for p in pairs if p is not None]  # a curve that did not move beyond 2 se has no shape
    results["across_sizes"][f"{key[0]}/{key[1]}"] = {"distance": float(np.mean(finite)) if finite else None,
                                                     "pairs": len(finite)}
  dynamics.plot_normalized(by_size, keys, paths.join(workdir, "normalized.png"))
  _plot_loss_vs_metrics(by_size, loss_by_size, keys, paths.join(workdir, "loss_vs_downstream.png"))

  paths.write_text(paths.join(workdir, "results.json"), json.dumps(results, indent=2))
  paths.write_text(paths.join(workdir, "report.md"), _report_md(results, labels, keys))
  return {"sizes": labels, "within": results["distances"][largest]["within"],
          "across": results["distances"][largest]["across"]}


def _plot_loss_vs_metrics(by_size, loss_by_size, keys, path) -> None:
  from yijax.analysis import plots
  from yijax.analysis.plots import figures as plt

  shown = [k for k in keys if k[0] not in LOSS_TASKS]
  if not shown or all(v is None for v in loss_by_size.values()):
    return
  fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
  for ax, key in zip(axes[0], shown):
    for label, trajs in by_size.items():
      loss = loss_by_size[label]
      if loss is None or key not in trajs:
        continue
      m = min(len(loss), len(trajs[key]))
      ax.plot(loss[:m, 3], trajs[key][:m, 3], marker="o", ms=3, label=label)
    ax.invert_xaxis()
    ax.set_xlabel("held-out loss (nats/token)")
    ax.set_title(f"{key[0]}/{key[1]}", fontsize=9)
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  plots.save(fig, path, dpi=100)


def _report_md(results, labels, keys) -> str:
  names = [f"{t}/{m}" for t, m in keys]
  lines = ["## Final values per size (first checkpoint -> last)", "",
           "| size | params | checkpoints | tokens | held-out loss | " + " | ".join(names) + " |",
           "|---" * (5 + len(names)) + "|"]
  for label in labels:
    s = results["sizes"][label]
    cells = [f"{_fmt(s['first'][n])} -> {_fmt(s['final'][n])}" for n in names]
    lines.append(f"| {label} | {s['params']:,} | {s['checkpoints']} | {s['tokens']:,.0f} | "
                 f"{_fmt(s['loss_first'])} -> {_fmt(s['loss_final'])} | " + " | ".join(cells) + " |")
  lines += ["", "## Distance between gain-fraction curves, within vs across capability domains (RMS; 0 = same "
            "shape; curves that did not move beyond 2 se left out)", "",
            "| size | within (pairs) | across (pairs) | did not move |", "|---|---|---|---|"]
  for label in labels:
    d = results["distances"][label]
    lines.append(f"| {label} | {_fmt(d['within'])} ({d['pairs_within']}) | {_fmt(d['across'])} "
                 f"({d['pairs_across']}) | {', '.join(d['static']) or '-'} |")
  lines += ["", "## Same task, different sizes: mean distance between the sizes' gain-fraction curves", "",
            "| task | distance (pairs) |", "|---|---|"]
  lines += [f"| {k} | {_fmt(v['distance'])} ({v['pairs']}) |" for k, v in results["across_sizes"].items()]
  lines += ["", "## Tokens to leave chance (2 se above it) and to reach half of the final gain", "",
            "| size | task | leave chance | half gain |", "|---|---|---|---|"]
  for label, entries in results["timing"].items():
    for name, t in entries.items():
      cells = ["-" if t[k] is None else f"{t[k]:,.0f}" for k in ("leave_chance", "half_gain")]
      lines.append(f"| {label} | {name} | {cells[0]} | {cells[1]} |")
  lines += ["", f"## Which moves first ({labels[-1]}): best lag of the change-to-change correlation "
            "(> 0: the first task's changes lead)", "", "| pair | best lag | correlation |", "|---|---|---|"]
  lines += [f"| {k} | {v['best_lag']} | {_fmt(v['correlation'])} |" for k, v in results["lags"].items()]
  lines += ["", "## Downstream metrics against held-out loss: checkpoint-to-checkpoint steps where both move "
            "beyond 2 se, and of those the steps where they move in opposite directions", "",
            "| size | metric | steps resolved | disagreeing |", "|---|---|---|---|"]
  for label, entries in results["decoupling"].items():
    for name, d in entries.items():
      lines.append(f"| {label} | {name} | {d['steps_resolved']} / {d['steps']} | {d['steps_disagreeing']} |")
  return "\n".join(lines) + "\n"
