"""Per-category totals for each endpoint, the differences, and the JSON / Markdown / console forms.

The JSON file has the shape the issue fixes (`results` with base_url, model, category, total,
correct, errors; `items` with base_url, model, category, id, correct, calls, error, latency_s,
completion_tokens), plus `truncated` per result and `finish_reason` and `reason` per item: how
many answers `max_tokens` cut (finish_reason "length") and why an answer was judged wrong, and
`endpoint` in both (the position of the --base-url; the same URL may be given twice).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from typing import Optional

from .harness import ItemResult


@dataclass(frozen=True)
class CategoryResult:
    endpoint: int  # position of its --base-url
    base_url: str
    model: str
    category: str
    total: int
    correct: int
    errors: int
    truncated: int
    mean_latency_s: float
    mean_completion_tokens: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def summarize(items: list[ItemResult]) -> list[CategoryResult]:
    """One row per (endpoint, category), endpoints and categories in the order they first appear."""
    groups: dict[tuple[int, str], list[ItemResult]] = {}
    for item in items:
        groups.setdefault((item.endpoint, item.category), []).append(item)
    rows = []
    for (endpoint, category), group in sorted(groups.items(), key=lambda kv: kv[0][0]):  # stable: categories keep their order
        answered = [i for i in group if i.error is None]
        rows.append(CategoryResult(
            endpoint=endpoint, base_url=group[0].base_url, model=group[0].model, category=category, total=len(group),
            correct=sum(i.correct for i in group), errors=len(group) - len(answered),
            truncated=sum(i.finish_reason == "length" for i in group),
            mean_latency_s=statistics.fmean([i.latency_s for i in answered]) if answered else 0.0,
            mean_completion_tokens=statistics.fmean([i.completion_tokens for i in answered]) if answered else 0.0,
        ))
    return rows


def to_json(rows: list[CategoryResult], items: list[ItemResult]) -> dict:
    return {
        "results": [{"base_url": r.base_url, "model": r.model, "category": r.category, "total": r.total,
                     "correct": r.correct, "errors": r.errors, "truncated": r.truncated, "endpoint": r.endpoint}
                    for r in rows],
        "items": [asdict(i) for i in items],
    }


def write_json(path: str, rows: list[CategoryResult], items: list[ItemResult]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_json(rows, items), f, indent=1, ensure_ascii=False)
        f.write("\n")


def _endpoints(rows: list[CategoryResult]) -> list[tuple[int, str, str]]:
    return sorted(dict.fromkeys((r.endpoint, r.base_url, r.model) for r in rows))


def _categories(rows: list[CategoryResult]) -> list[str]:
    return list(dict.fromkeys(r.category for r in rows))


def table(rows: list[CategoryResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison: per category, each endpoint's accuracy (correct/total,
    errors, answers cut by max_tokens, mean latency and completion tokens), then each other
    endpoint's difference from the first."""
    endpoints = _endpoints(rows)
    by_key = {(r.endpoint, r.category): r for r in rows}
    header = ["category"]
    for k, (_, url, model) in enumerate(endpoints):
        header.append(f"[{k + 1}] {model} @ {url}")
    header += [f"[{k + 1}] - [1]" for k in range(1, len(endpoints))]
    body = []
    for category in _categories(rows):
        cells = [category]
        first: Optional[CategoryResult] = None
        for endpoint, _, _ in endpoints:
            r = by_key.get((endpoint, category))
            first = first or r
            cells.append("-" if r is None else
                         f"{100 * r.accuracy:.1f} % ({r.correct}/{r.total}; errors {r.errors}; "
                         f"cut {100 * r.truncated / r.total:.0f} %; {r.mean_latency_s:.2f} s, "
                         f"{r.mean_completion_tokens:.0f} tok)")
        for endpoint, _, _ in endpoints[1:]:
            r = by_key.get((endpoint, category))
            cells.append("-" if r is None or first is None else f"{100 * (r.accuracy - first.accuracy):+.1f} pt")
        body.append(cells)
    return header, body


def markdown(rows: list[CategoryResult]) -> str:
    header, body = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    endpoints = _endpoints(rows)
    lines.append("")
    lines.append("Each cell: accuracy (correct/total; requests that failed; share of answers cut by "
                 "max_tokens; mean latency per item; mean completion tokens per item). "
                 + "; ".join(f"[{k + 1}] = `{m}` at {u}" for k, (_, u, m) in enumerate(endpoints)) + ".")
    return "\n".join(lines) + "\n"


def print_table(rows: list[CategoryResult], console) -> None:
    from rich.table import Table

    header, body = table(rows)
    out = Table(*header, title="BFCL accuracy")
    for cells in body:
        out.add_row(*cells)
    console.print(out)
