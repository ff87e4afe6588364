"""GB/s against N, one line per method beside the copy and read ceilings; a panel per (op, V) and mode."""

from __future__ import annotations

from pathlib import Path


def plot(doc: dict, path: Path) -> Path | None:
    """Write the PNG; None (with a printed line) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed; no PNG written")
        return None
    rows = doc["rows"]
    if not rows:
        return None
    panel_rows = [(op, v) for op in dict.fromkeys(r["op"] for r in rows) for v in sorted({r["V"] for r in rows})]
    modes = [m for m in ("fwd", "bwd", "fwd+bwd") if any(r["mode"] == m for r in rows)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        len(panel_rows),
        len(modes),
        figsize=(4.5 * len(modes), 3.0 * len(panel_rows) + 1),
        squeeze=False,
        layout="constrained",
    )
    for i, (op, v) in enumerate(panel_rows):
        ceilings = sorted((c for c in doc.get("ceilings", []) if c["V"] == v), key=lambda c: c["N"])
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            if ceilings:
                ns = [c["N"] for c in ceilings]
                ax.plot(ns, [c["copy_gbps"] for c in ceilings], "k--", lw=1, label="copy (read + write)")
                ax.plot(ns, [c["read_gbps"] for c in ceilings], "k:", lw=1, label="read (amax)")
            for method in methods:
                pts = sorted(
                    (r["N"], r["gbps"])
                    for r in rows
                    if (r["op"], r["mode"], r["V"], r["method"]) == (op, mode, v, method)
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=method)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")  # methods span orders of magnitude (eager formulas vs the ceilings)
            ax.set_title(f"{op} {mode}, V = {v}", fontsize=9)
            ax.set_xlabel("N (rows)", fontsize=8)
            ax.set_ylabel("GB/s (minimal bytes)", fontsize=8)
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()), list(handles.keys()), loc="outside lower center", ncol=min(len(handles), 5), fontsize=8
    )
    fig.suptitle(
        f"{doc['device']}: torch {doc['torch']}, triton {doc['triton']}, commit {doc['commit']}, {doc['date']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
