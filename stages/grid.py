"""Run an experiment grid through DVC's queue, or write its report.

    python -m stages.grid run grids/magnetic_tile.yaml --jobs 1
    python -m stages.grid report grids/magnetic_tile.yaml reports/magnetic_tile.md reports/magnetic_tile

`run` queues every (shot, seed) cell that has no experiment yet (`dvc exp run --queue`),
starts the workers (`dvc queue start --jobs N`) and waits; run it again after an
interruption and only the unfinished cells run.
"""

import argparse

from fsds.errors import run_stage
from fsds.pipeline.grid import load_grid
from fsds.pipeline.grid_queue import run_grid
from fsds.pipeline.grid_report import grid_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="queue the missing cells and wait for them")
    run.add_argument("grid", help="grid file (YAML)")
    run.add_argument("--jobs", type=int, default=1,
                     help="parallel DVC queue workers; with more than one, each gets cores // jobs threads")
    run.add_argument("--poll", type=float, default=30.0, help="seconds between looks at the queue")
    report = sub.add_parser("report", help="tables and figures of the finished cells")
    report.add_argument("grid", help="grid file (YAML)")
    report.add_argument("report", help="markdown file to write")
    report.add_argument("figures", help="folder for the figures (PNG)")
    for p in (run, report):
        p.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    grid = load_grid(args.grid, args.params)
    if args.command == "run":
        run_grid(grid, ".", jobs=args.jobs, poll=args.poll)
    else:
        grid_report(grid, ".", args.report, args.figures, args.params)


if __name__ == "__main__":
    run_stage(main)
