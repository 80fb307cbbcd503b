"""Write docs/bad-inputs.md from the reliability suite's two catalogues, so the page cannot drift.

Part one: the hand-made bad inputs of tests/reliability/test_bad_inputs.py with their messages.
Part two: every option of every command fuzzed with hostile values (tests/reliability/test_fuzz_cli.py).
Run `python docs/gen_bad_inputs.py` after adding a case or changing a message (a few minutes);
both test files fail while the committed page differs from what they find.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bad-inputs.md"


def main() -> int:
    import os

    os.environ["PROBEKIT_FUZZ"] = "full"  # every hostile value, not the test suite's quick subset
    sys.path[:0] = [str(ROOT / "tests" / "reliability"), str(ROOT / "tests"), str(ROOT)]
    import torch

    torch.set_num_threads(1)
    import test_bad_inputs
    import test_fuzz_cli

    page = test_bad_inputs.render(test_bad_inputs.catalogue_messages())
    results = test_fuzz_cli.catalogue_results()
    page = page.rstrip("\n") + "\n" + test_fuzz_cli.render(results)
    OUT.write_text(page, encoding="utf-8")
    skipped = sum(r[0] == "skipped" for r in results.values())
    print(f"wrote {OUT} ({len(test_bad_inputs.CASES)} bad inputs, {len(results)} fuzz cases, {skipped} skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
