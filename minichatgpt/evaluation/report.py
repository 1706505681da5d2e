"""The evaluation's files: ``results.json`` (every figure), ``report.md`` (tables) and ``report.png``.

``results`` is the dict ``recipes.eval.run`` builds::

    {"reward_models": [{"model", "pairs", "subsets": {"all": {...}, subset: {...}}}],
     "win_rates": [{"policy", "baseline", "judge", ...outcome statistics}],
     "perplexity": [{"model", "text", "perplexity", "nll", "tokens"}], "split": {...}}
"""

import json
import os
from typing import Dict, List

SECTIONS = ("reward_models", "win_rates", "perplexity")


def _ci(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def reward_model_table(rows: List[Dict]) -> List[str]:
    lines = ["| reward model | pairs | subset | n | accuracy | 95% CI | mean margin |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for subset, s in row["subsets"].items():
            lines.append(f"| {row['model']} | {row['pairs']} | {subset} | {s['count']} | {_num(s['accuracy'])} | "
                         f"{_ci(s['accuracy_ci'])} | {_num(s['margin'])} |")
    return lines


def win_rate_table(rows: List[Dict]) -> List[str]:
    lines = ["| policy | baseline | judge | n | win | tie | loss | win rate (ties half) | 95% CI | LC win rate | "
             "length policy / baseline (tokens) | KL policy to baseline |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kl = "n/a" if r["kl"] is None else f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}"
        lines.append(f"| {r['policy']} | {r['baseline']} | {r['judge_name']} | {r['count']} | {r['win_rate']:.3f} | "
                     f"{r['tie_rate']:.3f} | {r['loss_rate']:.3f} | {r['win_rate_ties_half']:.3f} | {_ci(r['win_rate_ties_half_ci'])} | "
                     f"{r['length_controlled']['lc_win_rate']:.3f} | {r['policy_length_tokens']:.1f} / "
                     f"{r['baseline_length_tokens']:.1f} | {kl} |")
    return lines


def perplexity_table(rows: List[Dict]) -> List[str]:
    lines = ["| model | text | tokens | NLL per token (nats) | perplexity |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['text']} | {r['tokens']} | {r['nll']:.4f} | {r['perplexity']:.3f} |" for r in rows]
    return lines


def markdown_report(results: Dict) -> str:
    """The tables of every section present in ``results``, with a line on how to read each."""
    out = ["# Evaluation", ""]
    if results.get("split"):
        out += ["## Data split", "", "| part | records | file |", "|---|---|---|"]
        out += [f"| {name} | {p['records']} | {p['path']} |" for name, p in results["split"].items()] + [""]
    if results.get("reward_models"):
        out += ["## Reward-model accuracy", "", "Correct when score(chosen) > score(rejected); 95% Wilson "
                "interval; margin = mean score(chosen) - score(rejected).", ""]
        out += reward_model_table(results["reward_models"]) + [""]
    if results.get("win_rates"):
        out += ["## Policy vs baseline", "", "Both answer every prompt with the same sampling settings and seed. "
                "Win rate counts ties as half (95% Wilson interval); LC = length-controlled (logistic regression "
                "of the outcome on tanh(length difference / its std), read at zero difference); KL = mean over "
                "prompts of the summed per-token log-ratio on the policy's own samples (± standard error).", ""]
        out += win_rate_table(results["win_rates"]) + [""]
    if results.get("perplexity"):
        out += ["## Perplexity", "", "exp(mean NLL per predicted token), per token of each model's tokenizer.", ""]
        out += perplexity_table(results["perplexity"]) + [""]
    return "\n".join(out)


def plot_report(results: Dict, path: str) -> bool:
    """Bars of reward-model accuracy (with 95% intervals) and of win/tie/loss rates; False when there is
    nothing to draw."""
    panels = [key for key in ("reward_models", "win_rates") if results.get(key)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.8), squeeze=False)
    for ax, key in zip(axes[0], panels):
        (_plot_accuracy if key == "reward_models" else _plot_win_rates)(ax, results[key])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_accuracy(ax, rows: List[Dict]) -> None:
    labels, values, errors = [], [], [[], []]
    for row in rows:
        for subset, s in row["subsets"].items():
            labels.append(f"{row['model']}\n{row['pairs']}" + ("" if subset == "all" else f"\n{subset}"))
            values.append(s["accuracy"])
            errors[0].append(s["accuracy"] - s["accuracy_ci"][0])
            errors[1].append(s["accuracy_ci"][1] - s["accuracy"])
    ax.bar(range(len(values)), values, yerr=errors, capsize=4, color="tab:blue")
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("reward-model accuracy (95% CI)")


def _plot_win_rates(ax, rows: List[Dict]) -> None:
    labels = [f"{r['policy']} vs {r['baseline']}\n({r['judge_name']})" for r in rows]
    left = [0.0] * len(rows)
    for key, color in (("win_rate", "tab:green"), ("tie_rate", "tab:gray"), ("loss_rate", "tab:red")):
        widths = [r[key] for r in rows]
        ax.barh(range(len(rows)), widths, left=left, height=0.5, color=color, label=key.replace("_rate", ""))
        left = [a + b for a, b in zip(left, widths)]
    for i, r in enumerate(rows):
        rate, (low, high) = r["win_rate_ties_half"], r["win_rate_ties_half_ci"]
        ax.errorbar(rate, i, xerr=[[rate - low], [high - rate]], color="black", capsize=4, marker="o", markersize=4)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("policy vs baseline: win / tie / loss (dot: win rate, ties half, 95% CI)")


def write_report(results: Dict, output_dir: str) -> Dict[str, str]:
    """Write ``results.json``, ``report.md`` and (when there is something to draw) ``report.png``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "markdown": os.path.join(output_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(results))
    png = os.path.join(output_dir, "report.png")
    if plot_report(results, png):
        paths["png"] = png
    return paths
