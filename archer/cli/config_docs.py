"""Regenerate the configuration reference:  python -m archer.cli.config_docs > docs/config.md

The text comes from archer.core.config.docs.render_markdown (a test fails when docs/config.md is stale).
"""

from __future__ import annotations

import sys

from archer.core.config.docs import render_markdown


def main() -> None:
    sys.stdout.write(render_markdown())


if __name__ == "__main__":
    main()
