"""Results files: ``<card>-<date>.json`` written as the run goes, found again, and turned into a README table.

Schema: ``{"device", "torch", "triton", "commit", "date", "copy_gbps", "rows": [{"op", "mode", "method",
"N", "V", "dtype", "ms", "gbps", "pct_copy", "peak_extra_bytes"}], "ceilings": [{"N", "V", "dtype",
"copy_ms", "copy_gbps", "read_ms", "read_gbps"}]}``. ``pct_copy`` is relative to the copy of the same
logits measured in the same run; the top-level ``copy_gbps`` is that of the largest shape measured.
This module imports no torch, so ``--readme-table`` answers at once.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path

from .names import HEADLINE_SHAPES


def card_slug(device_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=False, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def new_document(device: str, torch_version: str, triton_version: str | None, repo: Path) -> dict:
    return {
        "device": device,
        "torch": torch_version,
        "triton": triton_version,
        "commit": git_commit(repo),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "copy_gbps": None,
        "rows": [],
        "ceilings": [],
    }


def results_path(output_dir: Path, doc: dict, prefix: str = "") -> Path:
    return Path(output_dir) / f"{prefix}{card_slug(doc['device'])}-{doc['date']}.json"


def write(path: Path, doc: dict) -> None:
    """Write atomically, so a run stopped mid-way leaves the last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def newest(output_dir: Path) -> Path | None:
    """The benchmark results file with the latest date (then modification time); sweeps excluded."""
    files = [p for p in Path(output_dir).glob("*.json") if not p.name.startswith("sweep-")]
    if not files:
        return None

    def key(p: Path):
        try:
            date = json.loads(p.read_text()).get("date", "")
        except (OSError, ValueError):
            date = ""
        return date, p.stat().st_mtime

    return max(files, key=key)


def _cell(row: dict) -> str:
    pct = f", {row['pct_copy']:.0f}%" if row.get("pct_copy") is not None else ""
    return f"{row['ms']:.3g} ms{pct}"


def readme_table(doc: dict) -> str:
    """Markdown: one line naming the card and versions, then ms (% of copy bandwidth) per method."""
    rows = doc["rows"]
    shapes = {(r["N"], r["V"]) for r in rows}
    shown = [s for s in HEADLINE_SHAPES if s in shapes] or sorted(shapes)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    dtypes = sorted({r["dtype"] for r in rows})
    lines = [
        f"Measured on **{doc['device']}** ({', '.join(dtypes)} logits; torch {doc['torch']}, "
        f"triton {doc['triton']}, commit {doc['commit']}, {doc['date']}). Median ms and % of the bandwidth "
        "of a copy of the same logits measured in the same run.",
        "",
        "| op | mode | N x V | copy GB/s | " + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    ceilings = {(c["N"], c["V"]): c for c in doc.get("ceilings", [])}
    cells = {(r["op"], r["mode"], r["N"], r["V"], r["method"]): _cell(r) for r in rows}
    for n, v in shown:
        copy = ceilings.get((n, v), {}).get("copy_gbps")
        copy_cell = f"{copy:.0f}" if copy is not None else "-"
        for op in dict.fromkeys(r["op"] for r in rows):
            for mode in ("fwd", "bwd", "fwd+bwd"):
                line = [cells.get((op, mode, n, v, m), "-") for m in methods]
                if any(c != "-" for c in line):
                    lines.append(f"| {op} | {mode} | {n} x {v} | {copy_cell} | " + " | ".join(line) + " |")
    return "\n".join(lines)
