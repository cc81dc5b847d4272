"""``report.pdf`` of ``symbp grade``: the score histogram and the outcomes per target, with matplotlib.

How it works: a matplotlib PDF (``PdfPages``, the Agg backend, no creation date so the same class
gives the same file): page 1 the histogram of the totals with the mean and median; then one bar chart
per rubric target of how many students got each outcome (correct, each named mistake, not graded,
not answered), most common first, with the most common wrong formula under it.
"""

from __future__ import annotations

from collections import Counter


def _outcome(r) -> str:
    if r["verdict"] == "holds":
        return "correct"
    if r["verdict"] == "error":
        return "not answered" if r["source"] == "none" else "not graded (error)"
    return r.get("diagnosis") or "other"


def outcomes(grading) -> dict:
    """``{target: Counter(outcome -> students)}``, and the wrong formulas per target."""
    out = {t: Counter() for t in grading.assignment.rubric}
    for g in grading.grades:
        for r in g.results:
            out[r["target"]][_outcome(r)] += 1
    return out


def report_pdf(grading, path):
    """Write the report to ``path``."""
    try:
        import matplotlib
    except ImportError:
        from .errors import SymbpError

        raise SymbpError("report.pdf needs matplotlib: pip install 'symbp[grade]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    totals = [g.total for g in grading.grades]
    top = grading.grades[0].max_total if grading.grades else 0
    counts = outcomes(grading)
    wrong = {t: Counter() for t in grading.assignment.rubric}
    for g in grading.grades:
        for r in g.results:
            if r["verdict"] == "fails" and r["source"] == "formula":
                wrong[r["target"]][r["claim"]] += 1
    with PdfPages(path, metadata={"CreationDate": None, "Title": "symbp grade report"}) as pdf:
        fig, ax = plt.subplots(figsize=(8.27, 5.8))
        bins = max(1, min(20, int(top * 2) or 1))
        ax.hist(totals, bins=bins, range=(0, top or 1), color="#4c72b0", edgecolor="white")
        if totals:
            mean = sum(totals) / len(totals)
            ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.2f}")
            ax.legend()
        ax.set_xlabel(f"total points (of {top:g})")
        ax.set_ylabel("students")
        net = grading.assignment.spec.net.describe()
        ax.set_title(f"Scores of {len(totals)} students\n{net}", fontsize=10)
        fig.tight_layout()
        pdf.savefig(fig)
        plt.close(fig)
        targets = list(grading.assignment.rubric)
        per_page = 4
        for start in range(0, len(targets), per_page):
            chunk = targets[start:start + per_page]
            fig, axes = plt.subplots(per_page, 1, figsize=(8.27, 11.69), squeeze=False)
            for ax in axes[len(chunk):, 0]:
                ax.set_visible(False)  # the same height per target on every page
            for ax, target in zip(axes[:, 0], chunk):
                items = sorted(counts[target].items(), key=lambda kv: (-kv[1], kv[0]))
                labels = [k for k, _ in items][::-1]
                values = [v for _, v in items][::-1]
                colors = ["#55a868" if k == "correct" else "#c44e52" for k in labels]
                ax.barh(labels, values, color=colors)
                ax.set_title(f"dL/d{target} ({grading.assignment.rubric[target]:g} points)", fontsize=10)
                ax.set_xlabel("students")
                common = wrong[target].most_common(1)
                if common:
                    claim, n = common[0]
                    ax.text(1.0, -0.45, f"most common wrong formula: {claim}  ({n})", transform=ax.transAxes,
                            ha="right", fontsize=8, family="monospace")
            fig.tight_layout(h_pad=3)
            pdf.savefig(fig)
            plt.close(fig)
