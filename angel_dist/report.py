"""report.md of a pipeline run: the accuracy table, the seeds' summary, the rounds, and PNG plots (matplotlib).

  loss.png      training loss against step, one line per training stage
  rounds.png    dev acc@1 after each round (round 0: the positive-only model)
  dpo.png       DPO reward margin and preference accuracy per round (means over the round)
The metrics JSONL and TensorBoard events stay in each training stage's directory.
"""

from __future__ import annotations

from pathlib import Path

from angel_dist.atomic import atomic_path
from angel_dist.pipeline.rows import MATCHED, ROW_ORDER
from angel_dist.pipeline.seeds import ARMS, PAIRED
from angel_dist.pipeline.state import read_state
from angel_dist.train.metrics import read_metrics


def _metrics(run: str | None) -> list[dict]:
    return read_metrics(run) if run else []


def _rounds(stages: dict, phase: str) -> list[tuple[int, dict]]:
    out = []
    for name, record in stages.items():
        if name.startswith(f"{phase}-round-") and record["status"] == "done":
            out.append((int(name.rsplit("-", 1)[1]), record["outputs"]))
    return sorted(out, key=lambda x: x[0])


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def accuracy_table(final: dict, k: int, cell=_percent) -> str:
    """{row: {split: {"acc@1": v, f"acc@{k}": v, ...}}} as a Markdown table, the final table's rows
    in ROW_ORDER, any others after them as given; `cell` writes a value."""
    splits = sorted({s for scores in final.values() for s in scores})
    head = "| model | " + " | ".join(f"{s} acc@1 | {s} acc@{k}" for s in splits) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(splits))]
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    for name, scores in sorted(final.items(), key=lambda row: rank.get(row[0], len(ROW_ORDER))):
        cells = [f"{cell(scores[s]['acc@1'])} | {cell(scores[s][f'acc@{k}'])}" if s in scores else "- | -"
                 for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_sd(stat: dict) -> str:
    return _percent(stat["mean"]) + ("" if stat["sd"] is None else f" ± {_percent(stat['sd'])}")


def seeds_table(seeds: dict, k: int) -> str:
    """The `seeds` stage's summary: each arm's mean ± sd over the seeds, the paired difference
    ANGEL - matched, and each seed's rows."""
    summary, per_seed = seeds["summary"], seeds["per_seed"]
    names = {"positive-only": "positive-only", "angel": "ANGEL rounds",
             "matched": MATCHED, PAIRED: "ANGEL − matched (paired)"}
    rows = {names[arm]: {split: {m: v[arm] for m, v in metrics.items()} for split, metrics in summary.items()}
            for arm in (*ARMS, PAIRED)}
    lines = [f"Mean ± sample standard deviation over seeds {', '.join(per_seed)}:", "",
             accuracy_table(rows, k, _mean_sd), "", "Each seed:", ""]
    rows = {}
    for s, scores in per_seed.items():
        rows[f"seed {s}: {names['angel']}"] = scores["eval"]["angel"]
        rows[f"seed {s}: {names['matched']}"] = scores["eval"]["matched"]
        rows[f"seed {s}: {names[PAIRED]}"] = {split: {m: v[PAIRED]["per_seed"][s] for m, v in metrics.items()}
                                              for split, metrics in summary.items()}
    return "\n".join(lines) + "\n" + accuracy_table(rows, k)


def write_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    state = read_state(run)
    stages, recipe = state["stages"], state["recipe"]
    k = recipe["evaluate"]["k"]
    done = {n: r["outputs"] for n, r in stages.items() if r["status"] == "done"}

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, out in done.items():
        m = [x for x in _metrics(out.get("run")) if "loss" in x]
        if m:
            ax.plot([x["step"] for x in m], [x["loss"] for x in m], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    _save(fig, run / "loss.png")
    plt.close(fig)

    fig, (acc_ax, dpo_ax) = plt.subplots(1, 2, figsize=(10, 4))
    round_lines = []
    for phase in ("pretrain", "finetune"):
        rounds = _rounds(stages, phase)
        if not rounds:
            continue
        series = [(0, done.get(f"{phase}-eval", {}).get("dev_acc1"))] + [(i, o["dev_acc1"]) for i, o in rounds]
        acc_ax.plot([i for i, a in series if a is not None], [100 * a for i, a in series if a is not None], marker="o",
                    label=phase)
        margins, accs = [], []
        for i, out in rounds:
            m = [x for x in _metrics(out.get("run")) if "margin" in x]
            margins.append(sum(x["margin"] for x in m) / len(m) if m else float("nan"))
            accs.append(sum(x["accuracy"] for x in m) / len(m) if m else float("nan"))
            acc1 = "-" if out.get("dev_acc1") is None else f"{100 * out['dev_acc1']:.2f}"
            round_lines.append(f"| {phase} {i} | {out.get('n_pairs', 0)} | {acc1} | {margins[-1]:.4f} | "
                               f"{accs[-1]:.3f} |")
        dpo_ax.plot([i for i, _ in rounds], margins, marker="o", label=f"{phase} reward margin")
        dpo_ax.plot([i for i, _ in rounds], accs, marker="s", label=f"{phase} preference accuracy")
    acc_ax.set_xlabel("round")
    acc_ax.set_ylabel("dev acc@1 (%)")
    dpo_ax.set_xlabel("round")
    for ax in (acc_ax, dpo_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    _save(fig, run / "rounds.png")
    plt.close(fig)

    final = done.get("final-eval", {})
    text = [f"# {recipe['name']}", "", f"Run directory `{run}`; recipe fingerprint {state['recipe_fingerprint']}.", ""]
    if final:
        text += ["## Accuracy", "", accuracy_table(final, k), ""]
    if "seeds" in done:
        s = done["seeds"]
        steps = ", ".join(f"{seed}: {arms['steps']}" for seed, arms in s["per_seed"].items())
        text += ["## Seeds", "", f"The {s['phase']} rounds and the matched NLL baseline repeated under each seed (of "
                 f"the mining sample and of training) from the one positive-only model; the baseline takes as "
                 f"many optimizer steps as that seed's rounds (seed: steps {steps}).", "",
                 seeds_table(s, k), ""]
    if round_lines:
        text += ["## Rounds", "", "| round | pairs | dev acc@1 | reward margin | preference accuracy |",
                 "| --- | --- | --- | --- | --- |", *round_lines, "", "![rounds](rounds.png)", ""]
    text += ["## Training", "", "![loss](loss.png)", "",
             "Metrics: `train/<stage>/metrics.jsonl`; TensorBoard: `tensorboard --logdir train`.", "",
             "## Stages", "", "| stage | seconds |", "| --- | --- |"]
    text += [f"| {n} | {r.get('seconds', '-')} |" for n, r in sorted(stages.items(), key=lambda kv: kv[1]["order"])]
    path = run / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text) + "\n")
    return path
