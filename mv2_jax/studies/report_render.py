"""Render a study report (the dict of `report.report`) as markdown in MagicVideo-V2's Table 1
layout (one row per competitor: G, S, B, (G+S)/(B+S)) and as a PNG chart of (G+S)/(B+S) with
its bootstrap intervals. Matplotlib through its object API (Agg canvas): no pyplot, no global
backend switch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DASH = "—"
RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10, 20, 50, 100)


def ratio_text(value: float | None) -> str:
    """(G+S)/(B+S) for a table: two decimals, ∞ when B+S = 0, — when undefined."""
    if value is None:
        return DASH
    return "∞" if math.isinf(value) else f"{value:.2f}"


def rate_text(value: float | None) -> str:
    """A win rate as a percentage, — when undefined."""
    return DASH if value is None else f"{100 * value:.1f} %"


def with_interval(value: float | None, interval: Sequence[float] | None, text) -> str:
    """`value [low, high]`, or the value alone when there is no interval."""
    if value is None or interval is None:
        return text(value)
    return f"{text(value)} [{text(interval[0])}, {text(interval[1])}]"


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(line) + " |" for line in lines),
    ]


def comparison_table(section: Mapping[str, Any], criteria: Sequence[str], level: str) -> list[str]:
    """Table 1: one row per comparison; with several criteria, G/S/B pooled over them and one
    (G+S)/(B+S) column per criterion. Notes (no votes, only ties, …) follow as a list."""
    several = len(criteria) > 1
    header = ["Comparison", "Good (G)", "Same (S)", "Bad (B)", f"(G+S)/(B+S) [{level}]"]
    header += [f"{name} (G+S)/(B+S)" for name in criteria] if several else []
    header += [f"Win rate G/(G+B) [{level}]", "Prompts"]
    lines, notes = [], []
    for comparison in section["comparisons"]:
        label = f"{comparison['arm']} vs {comparison['versus']}"
        main = comparison["pooled"] if several else comparison["criteria"][criteria[0]]
        line = [label, str(main["G"]), str(main["S"]), str(main["B"])]
        line.append(with_interval(main["gsb_ratio"], main["gsb_ratio_ci"], ratio_text))
        for name in criteria if several else []:
            tally = comparison["criteria"][name]
            line.append(with_interval(tally["gsb_ratio"], tally["gsb_ratio_ci"], ratio_text))
        line += [with_interval(main["win_rate"], main["win_rate_ci"], rate_text)]
        line += [str(main["prompts"])]
        lines.append(line)
        for name, tally in comparison["criteria"].items():
            if tally["note"]:
                notes.append(f"- {label}, {name}: {tally['note']}.")
    if not lines:
        return ["No votes on real pairs yet."]
    return table(header, lines) + (["", *notes] if notes else [])


def criterion_tables(section: Mapping[str, Any], criteria: Sequence[str], level: str) -> list[str]:
    """With several criteria: one G/S/B table per criterion."""
    if len(criteria) < 2 or not section["comparisons"]:
        return []
    out = []
    for name in criteria:
        lines = []
        for comparison in section["comparisons"]:
            tally = comparison["criteria"][name]
            lines.append([
                f"{comparison['arm']} vs {comparison['versus']}",
                str(tally["G"]),
                str(tally["S"]),
                str(tally["B"]),
                with_interval(tally["gsb_ratio"], tally["gsb_ratio_ci"], ratio_text),
                with_interval(tally["win_rate"], tally["win_rate_ci"], rate_text),
            ])  # fmt: skip
        header = ["Comparison", "G", "S", "B", f"(G+S)/(B+S) [{level}]", f"Win rate [{level}]"]
        out += ["", f"**{name}**", "", *table(header, lines)]
    return out


def agreement_lines(section: Mapping[str, Any]) -> list[str]:
    """Krippendorff's α, overall and per criterion."""
    lines = []
    summaries = {"all criteria": section["agreement"], **section["agreement"]["per_criterion"]}
    for name, summary in summaries.items():
        alpha = DASH if summary["alpha"] is None else f"{summary['alpha']:.3f}"
        lines.append([name, alpha, str(summary["units_rated_twice"]), summary["note"] or ""])
    return table(["Criterion", "α (ordinal)", "Units rated twice or more", "Note"], lines)


def strength_lines(section: Mapping[str, Any], level: str) -> list[str]:
    """Bradley–Terry log-strengths per criterion, strongest first."""
    if not section["bradley_terry"]:
        return []
    out = []
    for name, fit in section["bradley_terry"].items():
        out += ["", f"**{name}**", ""]
        if not fit["arms"]:
            out.append(f"Not fitted: {fit['note']}.")
            continue
        ranked = sorted(fit["arms"], key=lambda arm: -arm["log_strength"])
        out += table(
            ["Arm", f"log-strength β [{level}]", "exp(β)"],
            [
                [arm["arm"], with_interval(arm["log_strength"], arm["log_strength_ci"],
                                           lambda v: f"{v:+.2f}"), f"{arm['strength']:.2f}"]
                for arm in ranked
            ],
        )  # fmt: skip
    return out


def render_markdown(result: Mapping[str, Any], chart: str | None = "report.png") -> str:
    """The report as markdown; `chart` is the PNG's path relative to the markdown file."""
    settings, gold, criteria = result["settings"], result["gold"], result["criteria"]
    level = f"{100 * settings['confidence']:g} % CI"
    trusted, everyone = result["results"]["gold_passed"], result["results"]["all_raters"]
    excluded = gold["excluded"]
    out = [f"# Side-by-side study: {result['study'] or '(unnamed)'}", ""]
    arms = ", ".join(
        f"{arm} (ours)" if arm == result["reference"] else arm for arm in result["arms"]
    )
    out += [
        f"Arms: {arms or DASH} · criteria: {', '.join(criteria) or DASH} · "
        f"{everyone['votes']} votes by {len(everyone['raters'])} raters on "
        f"{everyone['prompts']} prompts. G, S, B count votes from the first arm's side.",
        "",
    ]
    title = "raters who passed the gold checks" if excluded else "all raters"
    out += [f"## Results ({title})", ""]
    out += comparison_table(trusted, criteria, level) + criterion_tables(trusted, criteria, level)
    if excluded:
        out += ["", f"## Results (all raters, including {len(excluded)} excluded)", ""]
        out += comparison_table(everyone, criteria, level)
        out += criterion_tables(everyone, criteria, level)
    if chart and result["arms"]:
        out += ["", f"![(G+S)/(B+S) per comparison and criterion]({chart})"]
    out += ["", "## Gold checks", ""]
    threshold = f"{100 * gold['threshold']:g} %"
    if gold["raters"]:
        out += table(
            ["Rater", "Correct", "Checks", "Accuracy", "Status"],
            [
                [item["rater"], str(item["correct"]), str(item["total"]),
                 rate_text(item["accuracy"]),
                 "excluded" if item["rater"] in excluded else "kept"]
                for item in gold["raters"]
            ],
        )  # fmt: skip
        out += [""]
    out.append(
        f"Threshold {threshold}; excluded: {', '.join(excluded)}."
        if excluded
        else f"Threshold {threshold}; no rater fell below it"
        + (", so both sets of numbers are the same." if gold["raters"] else " (no gold checks).")
    )
    out += ["", f"## Inter-rater agreement ({title})", "", *agreement_lines(trusted)]
    if excluded:
        out += ["", "All raters:", "", *agreement_lines(everyone)]
    if trusted["bradley_terry"] is not None:
        out += ["", f"## Bradley–Terry strengths ({title})", *strength_lines(trusted, level)]
    out += ["", "## Method", "", *method_lines(settings)]
    return "\n".join(out) + "\n"


def method_lines(settings: Mapping[str, Any]) -> list[str]:
    """How the numbers were computed, in words."""
    return [
        f"- Intervals: percentile cluster bootstrap, {settings['n_bootstrap']} resamples of whole "
        f"prompts (seed {settings['seed']}), {100 * settings['confidence']:g} % level. A resample "
        "with B+S = 0 has (G+S)/(B+S) = ∞, so an upper bound can be ∞; a resample with G+B = 0 "
        "has no win rate and is left out of that interval.",
        "- Agreement: Krippendorff's α, ordinal (first arm worse < same < first arm better), "
        "units = (pair, criterion); votes are coded by arm, not by screen side.",
        "- Gold checks never enter G/S/B; a rater below the threshold is excluded from the "
        "main numbers; raters without gold checks are kept.",
        "- Bradley–Terry (more than two arms): a tie is half a win for each side; MLE by the MM "
        f"algorithm with {settings['virtual_ties']:g} virtual tie(s) per compared pair; "
        "log-strengths have mean 0.",
    ]


def draw_chart(result: Mapping[str, Any], path: str | Path) -> None:
    """A PNG of (G+S)/(B+S) with its interval per comparison (groups) and criterion (colours),
    on a log axis with a line at 1; ∞ and 0 are drawn as ▲ and ▼ near the axis edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    section = result["results"]["gold_passed"]
    comparisons, criteria = section["comparisons"], result["criteria"]
    figure = Figure(figsize=(max(5.5, 1.6 * len(comparisons) + 2), 3.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = [
        value
        for comparison in comparisons
        for tally in comparison["criteria"].values()
        for value in [tally["gsb_ratio"], *(tally["gsb_ratio_ci"] or [])]
        if value is not None and 0 < value < math.inf
    ]
    low, high = min([1.0, *finite]) / 2, max([1.0, *finite]) * 2
    floor, ceiling = low * 1.25, high / 1.25  # where 0 and ∞ are drawn, inside the axes
    width = 0.8 / max(1, len(criteria))
    for offset, name in enumerate(criteria):
        for position, comparison in enumerate(comparisons):
            tally = comparison["criteria"][name]
            if tally["gsb_ratio"] is None:
                continue
            x = position - 0.4 + width * (offset + 0.5)
            value = min(max(tally["gsb_ratio"], floor), ceiling)
            lower, upper = tally["gsb_ratio_ci"] or (value, value)
            lower, upper = min(max(lower, floor), ceiling), min(max(upper, floor), ceiling)
            color = f"C{offset % 10}"
            axes.plot([x, x], [lower, upper], color=color, linewidth=2)
            marker = "^" if value >= ceiling else "v" if value <= floor else "o"
            axes.plot([x], [value], marker=marker, color=color, label=name if not position else "")
    axes.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    axes.set_yscale("log")
    axes.set_ylim(low, high)
    axes.yaxis.set_minor_locator(NullLocator())  # plain numbers, not 2×10⁰
    ticks = [tick for tick in RATIO_TICKS if low <= tick <= high]
    axes.set_yticks(ticks, [f"{tick:g}" for tick in ticks])
    axes.set_xticks(range(len(comparisons)))
    axes.set_xticklabels([f"{c['arm']}\nvs {c['versus']}" for c in comparisons])
    axes.set_xlim(-0.6, max(0.6, len(comparisons) - 0.4))
    axes.set_ylabel("(G+S)/(B+S)")
    level = f"{100 * result['settings']['confidence']:g} %"
    axes.set_title(
        f"{result['study'] or 'study'}\n> 1 favours the first arm; {level} intervals; ▲ = ∞, ▼ = 0",
        fontsize="medium",
    )
    if not comparisons:
        axes.text(0, 1.0, "no votes yet", ha="center", va="bottom")
    elif len(criteria) > 1:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
