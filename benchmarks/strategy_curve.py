"""The annotate-next plot from saved benchmark runs, averaged over seeds.

``bench_hitl_real.py --strategy both --curve PNG`` draws one run. Runs of the
two strategies are often made apart (``--strategy even`` and ``--strategy
suggested``, one JSON per seed); this averages every case's held-out Dice per
k over the JSON files given and draws the same plot (one panel per case and
the mean), so the picture shows the figures of the tables::

    python benchmarks/strategy_curve.py --even docs/bench_hitl_real_v98_s*.json \\
        --suggested docs/bench_strategies_v98_suggested_s*.json --cases brain1 breast1 lung2 \\
        --out docs/images/strategies.png

Only cases present in both sets are drawn. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hitl_real import strategy_curve  # noqa: E402


def averaged(paths: list[Path], key: str) -> dict[str, dict[int, list[float]]]:
    """``{case: {k: [held-out Dice of every run]}}`` from the ``key`` list ("cases" or "suggested")."""
    out: dict[str, dict[int, list[float]]] = {}
    for path in paths:
        for res in json.loads(path.read_text()).get(key) or []:
            for row in res["rows"]:
                if row.get("finetuned") is not None:
                    out.setdefault(res["case"], {}).setdefault(int(row["k"]), []).append(float(row["finetuned"]))
    return out


def as_results(runs: dict[str, dict[int, list[float]]], cases: list[str]) -> list[dict]:
    return [{"case": c, "rows": [{"k": k, "finetuned": float(np.mean(v))} for k, v in sorted(runs[c].items())]}
            for c in cases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--even", type=Path, nargs="+", required=True, help="JSON runs of the even strategy")
    parser.add_argument("--suggested", type=Path, nargs="+", required=True, help="JSON runs of the suggested strategy")
    parser.add_argument("--cases", nargs="+", default=None, help="cases to draw (default: those in both)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    even, suggested = averaged(args.even, "cases"), averaged(args.suggested, "suggested")
    cases = args.cases or [c for c in even if c in suggested]
    missing = [c for c in cases if c not in even or c not in suggested]
    if missing or not cases:
        print(f"no runs of both strategies for: {', '.join(missing) or 'any case'}", file=sys.stderr)
        return 2
    # the suggested strategy's first round is the user's slice: its k = 1 is even's k = 1
    for c in cases:
        for k, v in even[c].items():
            if k == 1:
                suggested[c].setdefault(1, v)
    for label, runs in (("even", even), ("suggested", suggested)):
        for c in cases:
            cells = ", ".join(f"k={k}: {np.mean(v):.3f} ({len(v)} runs)" for k, v in sorted(runs[c].items()))
            print(f"{label:9s} {c}: {cells}")
    strategy_curve(as_results(even, cases), as_results(suggested, cases), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
