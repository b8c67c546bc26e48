"""The fault table: one row per fault (bench/faultkit.py says how each figure is taken).

    .venv/bin/python -m bench.faults                 # every fault
    .venv/bin/python -m bench.faults --only redis    # faults whose name contains "redis"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.faultkit import FAULTS, Row, run_fault


async def main(only: str | None) -> int:
    chosen = [f for name, f in FAULTS.items() if not only or only.lower() in name.lower()]
    if not chosen:
        print(f"no fault matches {only!r}; faults: {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    print(Row.HEADER, flush=True)
    failed = 0
    started = time.monotonic()
    for fault in chosen:
        row = await run_fault(fault)
        failed += not row.ok
        print(row.render(), flush=True)
    print(f"\n{len(chosen)} fault(s) in {time.monotonic() - started:.0f} s; "
          f"{failed} with anything lost, duplicated, wrong or unrecovered")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the faults whose name contains this text")
    sys.exit(asyncio.run(main(parser.parse_args().only)))
