"""``tbps study plan|experiment|collect|report|show``: the paper's empirical study (config/study.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.errors import UserInputError

DEFAULT_BACKBONES = ("ViT-B-32=_vit_b32", "ViT-B-16=_vit_b16")


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    """How the study stands in for the paper's setup on a dataset (the workflow passes config/config.yaml's
    `study:` settings)."""
    parser.add_argument("--study", required=True, type=Path, help="the study file (config/study.yaml)")
    parser.add_argument("--dataset", required=True, help="dataset key (the paper's numbers are per dataset)")
    parser.add_argument("--experiments-dir", type=Path, default=Path("config/experiments"),
                        help="folder of the presets and mixins (default: config/experiments)")
    parser.add_argument("--backbone", dest="backbones", action="extend", nargs="*", default=[],
                        metavar="NAME=MIXIN",
                        help="the mixin that stands in for a backbone of the study file, e.g. ViT-B-32=_study_tiny_rn "
                             f"(repeatable; default: {' '.join(DEFAULT_BACKBONES)})")
    parser.add_argument("--schedule", nargs="?", default=None, const=None, metavar="MIXIN",
                        help="a mixin applied to every row after the backbone, e.g. _study_short "
                             "(given without a value, or left out: the recipe's schedule)")
    parser.add_argument("--batch-scale", type=float, default=1.0,
                        help="multiply every row's global batch by this (default 1)")
    parser.add_argument("--augment-backend", default="backtranslation", choices=["none", "synonyms", "backtranslation"],
                        help="the dataset's caption augmentation backend (rows with back-translation on another "
                             "backend are marked not faithful; default: backtranslation)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study",
        help="the paper's ablation tables: plan the runs, collect their metrics, print and draw the tables",
        description=(
            "The TBPS-CLIP paper's empirical study (config/study.yaml: every table, every row as overrides on the "
            "row it builds on, the paper's numbers). The workflow builds it: snakemake results/<dataset>/study.parquet "
            "(README, \"The paper's study\"); `tbps study show results/<dataset>/study.parquet` prints it."
        ),
    )
    commands = parser.add_subparsers(dest="study_command", metavar="COMMAND", required=True)

    plan = commands.add_parser("plan", help="each row's run on a dataset: rows sharing a configuration train once")
    _settings_arguments(plan)
    plan.add_argument("--table", dest="tables", action="extend", nargs="*", default=[], metavar="KEY",
                      help="only these tables (default: all)")
    plan.set_defaults(func=_plan)

    experiment = commands.add_parser(
        "experiment", help="write one row's resolved experiment file (for `tbps train --experiment`)")
    _settings_arguments(experiment)
    experiment.add_argument("--row", required=True, help="row id of the study file")
    experiment.add_argument("--out", required=True, type=Path, help="YAML file to write")
    experiment.set_defaults(func=_experiment)

    collect = commands.add_parser(
        "collect", help="the runs' test metrics beside the paper's numbers: one row per (table, row, direction)")
    _settings_arguments(collect)
    collect.add_argument("--table", dest="tables", action="extend", nargs="*", default=[], metavar="KEY",
                         help="only these tables (default: all)")
    collect.add_argument("--metrics", nargs="*", default=[], type=Path, metavar="PARQUET",
                         help="test metrics of the study's runs, written by `tbps evaluate`")
    collect.add_argument("--allow-missing", action="store_true",
                         help="list runs without metrics as status 'missing' (a partial study) instead of failing")
    collect.add_argument("--out", required=True, type=Path, help="study table (Parquet) to write")
    collect.set_defaults(func=_collect)

    report = commands.add_parser("report", help="one table side by side with the paper (HTML) and its gain chart (PNG)")
    report.add_argument("--input", required=True, type=Path, help="study table written by `tbps study collect`")
    report.add_argument("--table", required=True, help="table key (e.g. losses)")
    report.add_argument("--html", required=True, type=Path, help="HTML page to write")
    report.add_argument("--chart", required=True, type=Path, help="PNG chart to write")
    report.set_defaults(func=_report)

    show = commands.add_parser("show", help="print a study table's tables (paper | ours | delta, gains, status)")
    show.add_argument("input", type=Path, help="study table written by `tbps study collect` (results/<dataset>/"
                                               "study.parquet, study/<table>.parquet or study_partial.parquet)")
    show.add_argument("--table", dest="tables", action="extend", nargs="*", default=[], metavar="KEY",
                      help="only these tables (default: all)")
    show.set_defaults(func=_show)


def _plan_from(args):
    from tbps.study.plan import StudySettings, plan_study
    from tbps.study.spec import load_study

    backbones = {}
    for pair in args.backbones or DEFAULT_BACKBONES:
        name, sep, mixin = pair.partition("=")
        if not sep or not name or not mixin:
            raise UserInputError(f"--backbone {pair!r}: expected NAME=MIXIN, e.g. ViT-B-32=_vit_b32")
        backbones[name] = mixin
    if not args.batch_scale > 0:
        raise UserInputError(f"--batch-scale {args.batch_scale}: must be > 0. Fix: e.g. 0.2 (320 -> 64)")
    settings = StudySettings(args.experiments_dir, backbones, args.schedule, args.batch_scale, args.augment_backend)
    return plan_study(load_study(args.study), settings)


def _plan(args) -> int:
    plan = _plan_from(args)
    tables = args.tables or None
    runs = plan.table_runs(tables)
    print(f"{len(runs)} run(s) for {len(plan.study.table_rows(tables))} row(s) on {args.dataset}:")
    for name in runs:
        run = plan.runs[name]
        where = "CPU" if run.on_cpu else "GPU"
        print(f"  {name:<30} {run.config.model.name:<14} {where}  sha256 {run.sha256[:12]}  rows: {', '.join(run.rows)}")
    return 0


def _experiment(args) -> int:
    import yaml

    from tbps.fileio import write_text_atomic

    plan = _plan_from(args)
    if args.row not in plan.rows:
        raise UserInputError(f"{args.study}: no row {args.row!r} in a table. Fix: use one of {sorted(plan.rows)}")
    planned = plan.rows[args.row]
    header = (f"# Study row {args.row} ({planned.row.name}) on {args.dataset}: run {planned.run}, resolved by "
              f"`tbps study experiment` from {args.study}.\n")
    if planned.departures:
        header += "# Not as in the paper: " + "; ".join(planned.departures) + "\n"
    write_text_atomic(args.out, header + yaml.safe_dump(planned.config.to_dict(), sort_keys=False))
    return 0


def _collect(args) -> int:
    import logging

    from tbps.study.report import text_report
    from tbps.study.table import study_frame, write_study_table

    plan = _plan_from(args)
    df = study_frame(plan, args.dataset, args.metrics, tables=args.tables or None, allow_missing=args.allow_missing)
    write_study_table(df, args.out)
    logging.getLogger("tbps.study").info("%s\n%s", args.out, text_report(df))
    return 0


def _report(args) -> int:
    from tbps.study.report import plot_gains, tables_in, write_page
    from tbps.study.table import read_study_table

    df = read_study_table(args.input)
    if args.table not in tables_in(df):
        raise UserInputError(f"{args.input}: no table {args.table!r}. Fix: use one of {tables_in(df)}")
    write_page(df, args.table, args.html)
    plot_gains(df, args.table, args.chart)
    return 0


def _show(args) -> int:
    from tbps.study.report import text_report
    from tbps.study.table import read_study_table

    print(text_report(read_study_table(args.input), args.tables or None), end="")
    return 0
