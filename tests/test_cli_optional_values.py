"""Options the workflow passes as `--option {value:q}` with zero or one value.

The rules quote every value on its own; an optional one is a list that renders as nothing when
empty, so these options must accept being given bare (meaning "none", or the command's default)
as well as with a value.
"""

import pytest

from tbps.cli import build_parser

PLAN = ["shards", "plan", "--captions", "a.parquet", "--split", "train", "--raw", "raw", "--out", "plan.json"]
WRITE = ["shards", "write", "--plan", "p.json", "--shard-index", "0", "--raw", "raw", "--out", "shard-000000.tar"]
TRAIN = ["train", "--experiment", "e.yaml", "--train", "train.json", "--out", "out"]
SYNTH = ["synth", "--format", "cuhk-pedes", "--out", "raw"]


@pytest.mark.parametrize(
    ("argv", "attribute", "bare", "given", "value"),
    [
        (PLAN, "max_bytes", None, ["--max-bytes", "5000"], 5000),
        (PLAN, "augmented", None, ["--augmented", "aug.parquet"], "aug.parquet"),
        (WRITE, "image_size", None, ["--image-size", "224x224"], "224x224"),
        (TRAIN, "val", None, ["--val", "val.json"], "val.json"),
        (TRAIN, "overrides", [], ["--set", "optim.lr=1e-3", "data.batch_size=8"], ["optim.lr=1e-3", "data.batch_size=8"]),
        (SYNTH, "ids", 400, ["--ids", "24"], 24),
        (SYNTH, "seed", 0, ["--seed", "3"], 3),
    ],
    ids=["plan --max-bytes", "plan --augmented", "write --image-size", "train --val", "train --set",
         "synth --ids", "synth --seed"],
)
def test_option_given_bare_means_none_or_default(argv, attribute, bare, given, value):
    parser = build_parser()
    flag = given[0]
    # Bare, in the middle of the command line as the rules write it, then with its value.
    with_bare = parser.parse_args([*argv[:-2], flag, *argv[-2:]])
    assert getattr(with_bare, attribute) == bare
    with_value = parser.parse_args([*argv, *given])
    got = getattr(with_value, attribute)
    assert (str(got) if attribute == "val" else got) == value
    assert getattr(parser.parse_args(argv), attribute) == bare  # left out: the same as bare


def test_set_is_still_repeatable():
    args = build_parser().parse_args([*TRAIN, "--set", "a.b=1", "--set", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"]
