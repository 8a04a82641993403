"""``python -m episodes PATH [PATH ...]``: print a summary table of each episode store.

Exits 2 with a one-line error (no traceback) when a file is missing, damaged or of another version.
"""

from __future__ import annotations

import sys

from .errors import StoreError
from .store import summarize


def main(argv: list[str] | None = None) -> int:
    """Print ``summarize(path)`` for each path; return 0, or 2 on a usage or store error."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m episodes PATH [PATH ...]\nprint a summary of stepwise episode stores (.hdf5)")
        return 0 if args else 2
    rc = 0
    for i, path in enumerate(args):
        try:
            text = summarize(path)
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 2
            continue
        if i:
            print()
        print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
