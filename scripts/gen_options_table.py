"""Write the options table of docs/options.md from the one declaration (pytest_forgetguard/options.py).

python scripts/gen_options_table.py          # rewrite the table in docs/options.md
python scripts/gen_options_table.py --check  # exit 1 when the page's table is stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pytest_forgetguard.options import markdown_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"
TABLE = re.compile(r"^\| option \| ini key \| env var \| meaning \|\n(?:\|.*\|\n)+", re.M)


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    if not TABLE.search(text):
        print(f"{PAGE}: no options table found", file=sys.stderr)
        return 1
    new = TABLE.sub(lambda _: markdown_table(), text, count=1)
    if "--check" in sys.argv[1:]:
        if new != text:
            print(f"{PAGE} is stale: run python scripts/gen_options_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
