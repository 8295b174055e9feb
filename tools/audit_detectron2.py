#!/usr/bin/env python
"""List every use, in the installed detectron2, of an API that Python 3.11-3.13,
numpy 2, Pillow >= 10, setuptools >= 82, torch 2.4-2.6 or shapely 2 removed or
changed, with the release that changed it and whether soco_d2.compat shims it
or the README lists it as unsupported.  Exits 1 when a hit is neither.

examples:
  %(prog)s                                 every hit, one per line
  %(prog)s --markdown                      the README summary block
  %(prog)s --update-readme README.md       rewrite that block in place

exit status: 0 every hit covered, 1 a hit is neither shimmed nor documented.
Installed as soco-d2-audit. Docs: docs/tools/audit_detectron2.md.
"""
from __future__ import annotations

import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2 import compat_audit
from soco_d2.cli import run_cli, tool_parser


def build_parser():
    parser = tool_parser(__doc__, prog="audit_detectron2.py")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--markdown", action="store_true", help="print the README summary block instead of every hit")
    out.add_argument("--update-readme", metavar="README", help="rewrite the summary block of this README in place")
    return parser


def main(args) -> int:
    report = compat_audit.audit("detectron2")
    if args.markdown:
        print(compat_audit.format_markdown(report))
    elif args.update_readme:
        with open(args.update_readme, encoding="utf-8") as f:
            text = f.read()
        with open(args.update_readme, "w", encoding="utf-8") as f:
            f.write(compat_audit.replace_readme_block(text, compat_audit.format_markdown(report)))
        print(f"updated {args.update_readme}: {compat_audit.summary_line(report)}")
    else:
        print(compat_audit.format_text(report))
    return 1 if report.uncovered else 0


def cli(argv=None) -> int:
    return run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
