"""Fire every hostile input at rlvr and count how many are handled as designed (issue 21).

Each `bench/hostile_*.py` module exposes `attacks() -> list[tuple[str, Callable[[], bool]]]`: a
name and a zero-argument callable that tries one hostile input and returns True when rlvr handled it
as designed (a clear error naming the option or file, no leaked secret, no code run, a bounded
time). This script imports all of them, runs every attack once, times it, and prints

    inputs tried, handled as designed, worst time

then writes the record (one row per attack) to bench/results/hostile.json. An attack that raises
counts as not handled (its error is recorded). Run from the repository root:

    PYTHONPATH=src .venv/bin/python bench/bench_hostile.py [--only SUBSTRING] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
Attack = tuple[str, Callable[[], bool]]


def load_modules(folder: Path = HERE) -> dict[str, object]:
    """module name -> module, for every hostile_*.py in `folder` (sorted by name)."""
    modules = {}
    sys.path.insert(0, str(folder))
    for path in sorted(folder.glob("hostile_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        modules[path.stem] = module
    return modules


def run_attack(module: str, name: str, attack: Callable[[], bool]) -> dict:
    """One attack, timed: {"module", "name", "handled", "seconds", "error"}."""
    t0 = time.perf_counter()
    error = ""
    try:
        handled = attack() is True
    except BaseException as err:  # noqa: BLE001 - an attack that escapes is a finding, not a crash
        if isinstance(err, KeyboardInterrupt):
            raise
        handled = False
        error = "".join(traceback.format_exception_only(type(err), err)).strip()[-500:]
    return {"module": module, "name": name, "handled": handled,
            "seconds": round(time.perf_counter() - t0, 3), "error": error}


def summarise(rows: list[dict]) -> dict:
    """The counts: inputs tried, handled as designed, worst time (and which attack took it)."""
    worst = max(rows, key=lambda r: r["seconds"]) if rows else {"seconds": 0.0, "name": ""}
    return {"tried": len(rows), "handled": sum(r["handled"] for r in rows),
            "worst_seconds": worst["seconds"], "worst_attack": f"{worst.get('module', '')}:{worst['name']}",
            "per_module": {m: [sum(r["handled"] for r in rows if r["module"] == m),
                               sum(r["module"] == m for r in rows)]
                           for m in dict.fromkeys(r["module"] for r in rows)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run only attacks whose module:name contains this")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hostile.json")
    args = parser.parse_args(argv)
    rows = []
    for module_name, module in load_modules().items():
        for name, attack in module.attacks():  # type: ignore[attr-defined]
            if args.only and args.only not in f"{module_name}:{name}":
                continue
            row = run_attack(module_name, name, attack)
            rows.append(row)
            mark = "ok  " if row["handled"] else "FAIL"
            print(f"{mark} {row['seconds']:7.2f}s  {module_name}:{name}"
                  + (f"  ({row['error'].splitlines()[-1][:160]})" if row["error"] else ""), flush=True)
    summary = summarise(rows)
    print(f"\ninputs tried {summary['tried']}, handled as designed {summary['handled']}, "
          f"worst time {summary['worst_seconds']:.2f} s ({summary['worst_attack']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "python": platform.python_version(),
                                    "platform": platform.platform(), "attacks": rows}, indent=1) + "\n")
    print(f"record: {args.out}")
    return 0 if summary["handled"] == summary["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
