"""What a benchmark run shows: a table a scenario, every figure by a dotted name, and the latency plot."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

Rows = list[tuple[str, str]]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every number (and verdict) by its dotted name: `rush.fairness_violations`, `steady.decision_ms.99`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key in ("options", "command", "database", "error_examples", "unfair_examples"):
            continue
        if isinstance(value, dict):
            flat |= flatten(value, name + ".")
        elif not isinstance(value, list) or all(isinstance(v, int | float | str) for v in value):
            flat[name] = value  # a number, a verdict, a list of numbers (each minute's p99) or of violations
    return flat


def ms3(values: dict[str, float], keys: Iterable[str] = ("50", "95", "99")) -> str:
    return " / ".join(f"{values[k]:.1f}" for k in keys)


def steady_rows(r: dict[str, Any]) -> Rows:
    p = r["paced"]
    counts = r["counts"]
    confirmed, rejected = counts.get("confirmed", 0), counts.get("rejected", 0)
    return [
        ("accepted/s (202)", f"{r['accepted_per_s']:.0f}"),
        ("decided/s", f"{r['decided_per_s']:.0f}"),
        ("submit→202 p50/p95/p99 ms", ms3(r["submit_ms"])),
        ("submit→decision p50/p95/p99 ms", ms3(r["decision_ms"])),
        (f"paced at {p['offered_rate']:.0f}/s: submit→decision p50/p95/p99 ms", ms3(p["decision_ms"])),
        ("confirmed / rejected (refused at once) / other",
         f"{confirmed} / {rejected} ({r.get('refused_at_once', 0)}) / {sum(counts.values()) - confirmed - rejected}"),
        ("double bookings · pending", f"{r['database']['double_bookings']} · {r['database']['pending']}"),
        ("CPU ms per decided booking (saturated phase):", ""),
        *((f"  {name}", f"{ms:.2f}") for name, ms in r["cpu_ms_per_booking"].items()),
        ("GET /doctors/{id}/slots req/s", f"{r['slots_per_s']:.0f}"),
        ("  … each for a new range (cache misses)", f"{r['slots_uncached_per_s']:.0f}"),
        ("baseline (a) raw booking tx/s", f"{r['baseline_raw_bookings_per_s']:.0f}"),
        ("baseline (b) trivial Litestar req/s", f"{r['baseline_trivial_per_s']:.0f}"),
        ("decided/s ÷ (a)", f"{r['ratio_decided_to_raw']:.2f}"),
        ("slots req/s ÷ (b)", f"{r['ratio_slots_to_trivial']:.2f}"),
    ]


def rush_rows(r: dict[str, Any]) -> Rows:
    others = {k: n for k, n in r["counts"].items() if k != "confirmed"}
    return [
        ("attempts · slots", f"{r['attempts']} · {r['slots']}"),
        ("confirmed (must equal the slots)", str(r["confirmed"])),
        ("other outcomes", ", ".join(f"{k} {n}" for k, n in sorted(others.items()))),
        ("  of which refused at once (409, nothing stored)", str(r.get("refused_at_once", 0))),
        ("5xx · never decided · connections retried", f"{r['http_5xx']} · {r['undecided']} · "
                                                      f"{r['connection_retries']}"),
        ("double bookings · pending", f"{r['double_bookings']} · {r['database']['pending']}"),
        ("submit→202 p50/p95/p99 ms", ms3(r["submit_ms"])),
        ("submit→decision p50/p95/p99 ms", ms3(r["decision_ms"])),
        ("seconds from release to last decision", f"{r['seconds_to_last_decision']:.1f}"),
        ("decided/s", f"{r['decided_per_s']:.0f}"),
        ("contested slots · fairness violations", f"{r['contested_slots']} · {r['fairness_violations']}"),
        ("CPU ms per attempt (% of one core while it lasted):", ""),
        *((f"  {name}", f"{ms:.2f} ({r['cpu_busy_pct'][name]:.0f} %)") for name, ms in r["cpu_ms_per_attempt"].items()),
    ]


def directory_rows(r: dict[str, Any]) -> Rows:
    return [
        ("doctors · booked appointments · seeded in", f"{r['doctors']} · {r['booked_appointments']} · "
                                                      f"{r['seed_seconds']:.1f} s"),
        (f"trivial Litestar req/s ({r['readers']} readers)", f"{r['trivial_per_s']:.0f}"),
        ("directory sorted by next free: req/s", f"{r['search_per_s']:.0f}"),
        ("  ÷ trivial", f"{r['ratio_search_to_trivial']:.3f}"),
        ("  p50/p95/p99 ms", ms3(r["search_ms"])),
        ("  a specialty's first (cold) search: median / max ms", f"{r['cold_search_ms']['50']:.0f} / "
                                                                 f"{r['cold_search_ms']['100']:.0f}"),
        ("one doctor's 7-day slots, uncached: req/s", f"{r['slots_uncached_per_s']:.0f}"),
        ("  ÷ trivial", f"{r['ratio_slots_to_trivial']:.3f}"),
        ("  p50/p95/p99 ms", ms3(r["slots_uncached_ms"])),
        ("double bookings · pending", f"{r['double_bookings']} · {r['database']['pending']}"),
    ]


def mixed_rows(r: dict[str, Any]) -> Rows:
    rows = [("offered operations/s · seconds", f"{r['offered_rate']:.0f} · {r['seconds']:.0f}"),
            ("  rate from", r["rate_source"]),
            ("operations · errors · connections retried", f"{r['operations_total']} · {r['errors']} · "
                                                          f"{r['connection_retries']}")]
    for op, figures in r["operations"].items():
        if isinstance(figures, str):
            rows.append((f"{op}", figures))
        else:
            rows.append((f"{op}: count · p50 / p99 ms", f"{figures['count']} · {figures['p50_ms']:.1f} / "
                                                          f"{figures['p99_ms']:.1f}"))
    rows.append(("double bookings · pending", f"{r['double_bookings']} · {r['pending']}"))
    return rows


def soak_rows(r: dict[str, Any]) -> Rows:
    rows = mixed_rows(r)
    for name in r["rss_start_mib"]:
        rows.append((f"{name} RSS MiB: after warm-up → end (growth)",
                     f"{r['rss_start_mib'][name]:.0f} → {r['rss_end_mib'][name]:.0f} "
                     f"({r['rss_growth_pct'][name]:+.1f} %)"))
    rows.append(("p99 ms per minute, all operations", " ".join(f"{v:.0f}" for v in r["p99_ms_per_minute"])))
    rows.append(("p99 ms per minute, bookings", " ".join(f"{v:.0f}" for v in r["booking_p99_ms_per_minute"])))
    return rows


ROWS = {"steady": steady_rows, "rush": rush_rows, "directory": directory_rows, "mixed": mixed_rows,
        "soak": soak_rows}


def tables(results: dict[str, Any]) -> str:
    out = []
    for name, result in results.items():
        rows = ROWS[name](result) + [("correctness", "OK" if not result["violations"] else "VIOLATED")]
        width = max(len(k) for k, _ in rows)
        out.append(f"\n== {name} ({result['wall_seconds']:.0f} s) " + "=" * 40)
        out.extend(f"{k:<{width}}  {v:>24}" for k, v in rows)
    return "\n".join(out)


def plot(timelines: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Submit→decision of each booking against when it was sent, one panel a scenario (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(timelines), figsize=(6 * len(timelines), 3.6), squeeze=False)
    for ax, (name, line) in zip(axes[0], timelines.items(), strict=True):
        ax.scatter([t for t, _ in line], [ms for _, ms in line], s=2, alpha=0.4, linewidths=0)
        ax.set_yscale("log")
        ax.set_title({"rush": "rush: from the release", "soak": "soak: bookings and reschedules"}.get(name, name))
        ax.set_xlabel("seconds")
        ax.set_ylabel("submit → decision, ms")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
