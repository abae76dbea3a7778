"""Expression-prediction benchmark: CoMTIP beside its peer families, leave-one-patient-out.

The same command as ``comtip benchmark``, with the same options (see benchmarks/README.md):

    python benchmarks/expression_prediction.py --preset cpu --jobs 2 --data-root ../shared/data
"""

from __future__ import annotations

import sys

from comtip_sc.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Run ``comtip benchmark`` with ``argv`` (default: this process's arguments)."""
    return cli_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
