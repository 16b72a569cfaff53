"""Summarise runs over several seeds (records written by scripts/seed_runs.sh) as markdown."""

import argparse

from fsds.io import write_text
from fsds.seeds import collect_runs, gain_markdown, seeds_markdown, timing_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", help="folder of run records (*.json)")
    parser.add_argument("out", help="markdown file to write")
    parser.add_argument("--title", default="Results over seeds")
    parser.add_argument("--intro", default="", help="a paragraph placed under the title")
    args = parser.parse_args()

    runs = collect_runs(args.runs)
    text = "\n\n".join(
        [f"# {args.title}", args.intro, "## Mean (std) over seeds", seeds_markdown(runs),
         "## Gains over the baseline", gain_markdown(runs), "## Wall time", timing_markdown(runs)]
    )
    write_text(args.out, text.strip() + "\n")


if __name__ == "__main__":
    main()
