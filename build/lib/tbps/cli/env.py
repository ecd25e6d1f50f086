"""`tbps env`: the provenance record that checkpoints and metrics rows carry, for this environment."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "env",
        help="print the environment provenance recorded in checkpoints and metrics rows",
        description=(
            "Print the record that training stores in every checkpoint and evaluation adds to every metrics "
            "row: git commit and whether tracked files differ from it, Python, torch, CUDA and cuDNN (or cpu), "
            "open_clip, webdataset, the visible GPUs, the sha256 of the lock file and the installed packages "
            "whose version differs from it."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of aligned lines")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import json

    from tbps.provenance import environment

    env = environment()
    if args.json:
        print(json.dumps(env, indent=1))
    else:
        width = max(map(len, env))
        for key, value in env.items():
            print(f"{key.ljust(width)}  {value if value != '' else '-'}")
    return 0
