"""acc@k by the union-of-CUIs rule, from prediction records (pure).

A mention is a hit at k when the CUIs of beams 1..k, taken together, meet its gold set. A
mention whose gold concepts are all missing from the KB cannot be hit; it stays in the
denominator as a miss and is counted separately.
"""

from __future__ import annotations


def hit_at(record: dict, k: int) -> bool:
    gold = set(record["cui_label"])
    return bool(gold & {c for cuis in record["cui_result"][:k] for c in cuis})


def accuracy(records: list[dict], k_max: int, kb_cuis: set[str] | frozenset[str] | None = None) -> dict:
    """{"mentions", "acc@1".."acc@k_max", "gold_missing_from_kb"} (accuracies in [0, 1])."""
    n = len(records)
    out: dict = {"mentions": n}
    for k in range(1, k_max + 1):
        out[f"acc@{k}"] = sum(hit_at(r, k) for r in records) / n if n else 0.0
    if kb_cuis is not None:
        out["gold_missing_from_kb"] = sum(not (set(r["cui_label"]) & kb_cuis) for r in records)
    return out


def format_table(summary: dict, k_max: int) -> str:
    head = " ".join(f"{'acc@' + str(k):>7}" for k in range(1, k_max + 1))
    row = " ".join(f"{100 * summary[f'acc@{k}']:7.2f}" for k in range(1, k_max + 1))
    extra = f"  ({summary['gold_missing_from_kb']} with gold missing from the KB, counted as misses)" \
        if summary.get("gold_missing_from_kb") else ""
    return f"mentions {summary['mentions']}{extra}\n{head}\n{row}"
