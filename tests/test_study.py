"""The paper's study as data (config/study.yaml, tbps.study): the file against tbps/published.py, every
row resolved on every dataset's stand-ins, rows sharing runs, the study table, its pages and text."""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
import yaml

from tbps import published
from tbps.cli import main
from tbps.config import load_experiment, parse_dotted
from tbps.datasets import REAL_DATASETS
from tbps.errors import UserInputError
from tbps.provenance import FIELDS
from tbps.study.plan import StudySettings, plan_study
from tbps.study.report import page_frame, plot_gains, text_report, write_page
from tbps.study.spec import load_study
from tbps.study.table import STUDY_SCHEMA, read_study_table, study_frame

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "config" / "study.yaml"
EXPERIMENTS = REPO / "config" / "experiments"
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
DISTINCT_RUNS = 66  # README and BENCHMARKS.md ("The paper's study") quote this count


def settings_of(dataset: str) -> StudySettings:
    """The stand-ins config/config.yaml gives a dataset, merged as common.smk merges them."""
    entry = CONFIG["datasets"][dataset]
    return StudySettings.merged(EXPERIMENTS, CONFIG["study"], entry.get("study"),
                                entry.get("augment_backend", "synonyms"))


@pytest.fixture(scope="module")
def study():
    return load_study(STUDY)


@pytest.fixture(scope="module")
def plans(study):
    return {dataset: plan_study(study, settings_of(dataset)) for dataset in CONFIG["datasets"]}


# --------------------------------------------------------------------------- the file and the paper's numbers


def test_every_published_study_row_is_in_the_file_with_the_same_numbers(study):
    # load_study refuses a row whose numbers differ from tbps/published.py, or that lacks them.
    assert set(published.study_rows()) <= set(study.rows)
    for row_id in published.study_rows():
        for dataset, text in study.rows[row_id].paper.items():
            numbers = published.study_numbers(row_id, dataset)
            assert published.parse_values(text) == (numbers.R1, numbers.R5, numbers.R10, numbers.mAP)
    assert published.study_numbers("bt_010", "cuhk-pedes").source.endswith("Tables 3 and 14")
    assert published.study_numbers("clip_star", "rstpreid") is None  # ablations: CUHK-PEDES only
    assert published.study_numbers("clip_b16", "rstpreid").R10 == 86.60


def test_a_number_that_differs_from_published_stops_the_study(tmp_path):
    text = STUDY.read_text().replace("63.66/84.08/90.11/56.46", "63.66/84.08/90.11/56.47")
    (tmp_path / "study.yaml").write_text(text)
    with pytest.raises(UserInputError, match=r"rows\.global_grad\.paper\.cuhk-pedes: 63\.66/84\.08/90\.11/56\.47 "
                                             r"differs from tbps/published\.py's 63\.66/84\.08/90\.11/56\.46"):
        load_study(tmp_path / "study.yaml")


def test_two_tables_of_published_that_disagree_are_refused(monkeypatch):
    tables = copy.deepcopy(published.ABLATION_TABLES)
    tables["Table 3"]["bt_010"] = ("BT", "64.78/84.67/90.56/57.49")
    monkeypatch.setattr(published, "ABLATION_TABLES", tables)
    with pytest.raises(ValueError, match="'bt_010' has R1 64.77 and 64.78"):
        published.study_numbers("bt_010", "cuhk-pedes")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["rows"]["dropout"].update(colour="red"), r"rows\.dropout: unknown key\(s\) \['colour'\]"),
    (lambda d: d["rows"]["clip"].update(inherit="clip_star"), r"needs exactly one of `experiment:`"),
    (lambda d: d["rows"]["clip_star"].update(inherit="pool"), r"`inherit:` loops"),
    (lambda d: d["tables"]["tricks"]["rows"].append("nope"), r"tables\.tricks\.rows: no row\(s\) \['nope'\]"),
    (lambda d: d["rows"]["dropout"].update(faithful=False), r"`reason:` goes with `faithful: false`"),
    (lambda d: d["rows"]["dropout"].update(paper={"cuhk-pedes": "61.06/82.00"}), r"is not R1/R5/R10/mAP"),
    (lambda d: d["rows"]["dropout"].pop("paper"), r"no numbers for cuhk-pedes, but the paper published"),
    (lambda d: d["rows"].update(extra={"name": "x", "inherit": "clip"}), r"\['extra'\] are in no table"),
], ids=["unknown-key", "root-and-inherit", "loop", "unknown-row", "reason", "numbers", "missing-numbers", "unused"])
def test_a_broken_study_file_names_the_row_and_the_fix(tmp_path, edit, message):
    data = yaml.safe_load(STUDY.read_text())
    edit(data)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(UserInputError, match=message) as error:
        load_study(tmp_path / "study.yaml")
    assert "Fix:" in str(error.value) and str(tmp_path / "study.yaml") in str(error.value)


# --------------------------------------------------------------------------- rows resolved on each dataset


def test_every_row_resolves_on_every_dataset_of_the_config(study, plans):
    for dataset, plan in plans.items():
        assert set(plan.rows) == set(study.rows), dataset
        assert len(plan.runs) == DISTINCT_RUNS, (dataset, len(plan.runs))
        for row_id, planned in plan.rows.items():
            model = planned.config.model
            if dataset == "synthetic":
                assert model.name == {"ViT-B-32": "TBPS-Tiny-RN", "ViT-B-16": "TBPS-Tiny-ViT"}[planned.row.backbone]
                assert planned.config.optim.epochs == 1 and not planned.faithful
            else:  # the real datasets, and a further synthetic set without stand-ins of its own
                assert (model.name, model.pretrained) == (planned.row.backbone, "openai"), row_id
                assert planned.config.optim.epochs == 5, row_id
                if dataset in REAL_DATASETS:
                    assert planned.faithful, (row_id, planned.departures)
                elif planned.config.data.backtranslation_prob > 0:  # synthetic-pretrain: augment_backend none
                    assert planned.departures == ("back-translation is a no-op (augment_backend: none)",), row_id


def test_rows_with_one_configuration_share_one_run(plans):
    plan = plans["cuhk-pedes"]
    shared = {run.name: run.rows for run in plan.runs.values() if len(run.rows) > 1}
    assert shared == {
        "study_clip": ("clip", "clip_b32"), "study_tbps_clip": ("tbps_clip", "tbps_clip_b32"),
        "study_resized_crop": ("resized_crop", "resized_crop_min_090"),
        "study_erasing": ("erasing", "erasing_area_10_20"), "study_gaussian_blur": ("gaussian_blur", "gaussian_blur_k3"),
        "study_color_jitter": ("color_jitter", "color_jitter_010"),
        "study_color_jitter_hue": ("color_jitter_hue", "color_jitter_hue_010"),
        "study_rotation": ("rotation", "rotation_150"),
    }
    # CLIP* is in five tables and trains once.
    assert plan.table_runs().count("study_clip_star") == 1


def test_the_recipe_rows_are_the_presets_and_the_chain_sets_what_the_paper_says(plans):
    plan = plans["cuhk-pedes"]
    full = plan.runs[plan.rows["tbps_clip_b16"].run]
    assert full.sha256 == load_experiment(EXPERIMENTS / "tbps_clip.yaml").sha256()
    simplified = plan.runs[plan.rows["simplified_b16"].run]
    assert simplified.sha256 == load_experiment(EXPERIMENTS / "tbps_clip_simplified.yaml").sha256()
    cfg = {row: plan.rows[row].config for row in ("clip", "global_grad", "clip_star", "ss_t", "simplified_b16_batch160")}
    assert (cfg["clip"].loss.global_grad, cfg["clip"].loss.emulated_processes, cfg["clip"].train.seed) == (False, 4, 1)
    assert (cfg["global_grad"].loss.global_grad, cfg["global_grad"].loss.emulated_processes) == (True, 1)
    assert cfg["clip_star"].data.image_aug.strategy == "none" and cfg["clip_star"].data.backtranslation_prob == 0
    assert cfg["ss_t"].loss.identity_targets and cfg["ss_t"].loss.ss_t_weight == 0.4
    assert cfg["simplified_b16_batch160"].data.batch_size == 160 and cfg["simplified_b16_batch160"].train.seed == 0
    assert plans["synthetic"].rows["simplified_b16_batch160"].config.data.batch_size == 32


def test_the_set_overrides_rebuild_every_run(plans):
    """What the train rule passes: the root preset plus --set gives the run's configuration."""
    for plan in (plans["synthetic"], plans["cuhk-pedes"]):
        for run in plan.runs.values():
            rebuilt = load_experiment(EXPERIMENTS / f"{run.preset}.yaml", parse_dotted(list(run.overrides)))
            assert rebuilt.sha256() == run.sha256 and rebuilt.name == run.name


def test_departures_say_why_a_row_is_not_the_papers(plans):
    bt = plans["synthetic"].rows["bt_010"].departures
    assert bt == ("TBPS-Tiny-RN (trained from scratch) stands in for ViT-B/32 with OpenAI's weights",
                  "schedule _study_short: 1 epoch(s)", "global batch 64 (batch_scale 0.2)",
                  "back-translation replaced by offline paraphrases (augment_backend: synonyms)")
    assert plans["cuhk-pedes"].rows["bt_010"].departures == ()


@pytest.mark.parametrize(("mixin", "batch_scale", "message"), [
    ({"model": {"name": "TBPS-Tiny-RN", "pretrained": None, "freeze_patch_embed": False}}, 1.0,
     r"sets model\.freeze_patch_embed, which the study's row 'lock_bl' sets"),
    ({"model": {"name": "TBPS-Tiny-RN", "pretrained": None}}, 0.01, r"global batch is 3 .* not a multiple of 4"),
], ids=["mixin-undoes-a-row", "batch-scale"])
def test_stand_ins_that_would_change_a_row_are_refused(tmp_path, study, mixin, batch_scale, message):
    for path in EXPERIMENTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "_bad.yaml").write_text(yaml.safe_dump(mixin))
    settings = StudySettings(tmp_path, {"ViT-B-32": "_bad", "ViT-B-16": "_bad"}, None, batch_scale)
    with pytest.raises(UserInputError, match=message):
        plan_study(study, settings)


def test_an_unmapped_backbone_names_the_config_key(study):
    with pytest.raises(UserInputError, match=r"backbone 'ViT-B-32', which config/config.yaml's `study: backbones:`"):
        plan_study(study, StudySettings(EXPERIMENTS, {"ViT-B-16": "_vit_b16"}))


@pytest.mark.parametrize("choice", ["ViT-B-16", "_study_tiny_vit"])
def test_study_backbone_trains_every_row_with_one_stand_in(study, choice):
    """--config study_backbone=...: a backbone name (its stand-in on the dataset) or a mixin; the backbone
    table's B/32 and B/16 rows then resolve alike and share their runs."""
    entry = CONFIG["datasets"]["synthetic"]
    settings = StudySettings.merged(EXPERIMENTS, CONFIG["study"], entry["study"], "synonyms", choice)
    assert settings.backbones == {"ViT-B-32": "_study_tiny_vit", "ViT-B-16": "_study_tiny_vit"}
    plan = plan_study(study, settings)
    assert len(plan.runs) == DISTINCT_RUNS - 2
    assert plan.rows["clip_b16"].run == plan.rows["clip_b32"].run == "study_clip"
    assert plan.rows["dropout"].config.model.name == "TBPS-Tiny-ViT"
    assert "TBPS-Tiny-ViT (trained from scratch) stands in for ViT-B/32" in plan.rows["dropout"].departures[0]


def test_an_unknown_study_backbone_names_both_choices():
    with pytest.raises(UserInputError, match=r"study_backbone 'ViT-L-14': neither a backbone of `study: backbones:` "
                                             r"\(ViT-B-16, ViT-B-32\) nor a mixin of"):
        StudySettings.merged(EXPERIMENTS, CONFIG["study"], None, "synonyms", "ViT-L-14")


# --------------------------------------------------------------------------- the study table

ENVIRONMENT = {name: 1 if kind is int else f"example {name}" for name, kind in FIELDS.items()}


def write_metrics(folder: Path, dataset: str, run: str, r1: float, config_sha256: str, synonyms: str = "none") -> Path:
    """A run's test metrics as `tbps evaluate` writes them (t2i and i2t)."""
    rows = [{"dataset": dataset, "experiment": run, "split": "test", "direction": d, "epoch": 1, "selection": "last",
             "R1": r1 if d == "t2i" else 1.0, "R5": 50.0, "R10": 60.0, "mAP": r1 / 2, "mINP": 5.0,
             "num_queries": 10, "num_gallery": 5, "seed": 1, "config_sha256": config_sha256, "data_sha256": "d" * 64,
             "synonym_source": synonyms, "eval_precision": "fp32", **ENVIRONMENT, "checkpoint": f"results/{dataset}/{run}/train/final.pt",
             "created_at": "2024-01-01T00:00:00+00:00"} for d in ("t2i", "i2t")]
    path = folder / dataset / run / "eval" / "test.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def tricks_metrics(tmp_path: Path, plan, dataset: str, skip: tuple[str, ...] = ()) -> list[Path]:
    """Metrics for every run of the tricks table: R@1 10, 11, ... in table order."""
    runs = plan.table_runs(["tricks"])
    return [write_metrics(tmp_path, dataset, run, 10.0 + i, plan.runs[run].sha256) for i, run in enumerate(runs)
            if run not in skip]


def test_study_table_puts_ours_beside_the_paper_with_gains(tmp_path, plans):
    plan = plans["cuhk-pedes"]
    df = study_frame(plan, "cuhk-pedes", tricks_metrics(tmp_path, plan, "cuhk-pedes"), tables=["tricks"])
    assert dict(df.schema) == STUDY_SCHEMA
    assert df.height == 6 * 2 and set(df["status"]) == {"done"}
    t2i = {r["row"]: r for r in df.filter(pl.col("direction") == "t2i").iter_rows(named=True)}
    gg = t2i["global_grad"]
    assert (gg["base"], gg["R1"], gg["paper_R1"], gg["paper_table"]) == ("clip", 11.0, 63.66, "Table 1")
    assert gg["diff_R1"] == pytest.approx(11.0 - 63.66)
    assert gg["gain_R1"] == pytest.approx(1.0) and gg["paper_gain_R1"] == pytest.approx(63.66 - 60.67)
    assert gg["paper_gain_dataset"] == "cuhk-pedes" and gg["faithful"] and gg["departures"] is None
    assert t2i["clip"]["base"] is None and t2i["clip"]["gain_R1"] is None
    assert gg["config_sha256"] == plan.runs["study_global_grad"].sha256 and gg["code_version"] == "example code_version"
    i2t = df.filter((pl.col("direction") == "i2t") & (pl.col("row") == "global_grad")).row(0, named=True)
    assert i2t["paper_R1"] is None and i2t["paper_gain_R1"] is None and i2t["gain_R1"] == 0.0


def test_on_another_dataset_the_papers_gain_comes_from_cuhk_pedes(tmp_path, plans):
    plan = plans["synthetic"]
    df = study_frame(plan, "synthetic", tricks_metrics(tmp_path, plan, "synthetic"), tables=["tricks"])
    gg = df.filter((pl.col("row") == "global_grad") & (pl.col("direction") == "t2i")).row(0, named=True)
    assert gg["paper_R1"] is None and gg["diff_R1"] is None
    assert gg["paper_gain_R1"] == pytest.approx(2.99) and gg["paper_gain_dataset"] == "cuhk-pedes"
    assert not gg["faithful"] and "TBPS-Tiny-RN" in gg["departures"]


def test_a_missing_run_fails_unless_the_partial_study_is_asked_for(tmp_path, plans):
    plan = plans["cuhk-pedes"]
    files = tricks_metrics(tmp_path, plan, "cuhk-pedes", skip=("study_dropout",))
    with pytest.raises(UserInputError, match=r"no test metrics for 1 run\(s\) \(study_dropout\).*study_partial"):
        study_frame(plan, "cuhk-pedes", files, tables=["tricks"])
    df = study_frame(plan, "cuhk-pedes", files, tables=["tricks"], allow_missing=True)
    dropout = df.filter(pl.col("row") == "dropout")
    assert dropout["status"].to_list() == ["missing", "missing"] and dropout["R1"].to_list() == [None, None]
    assert dropout["paper_R1"].to_list() == [61.06, None]
    assert df.filter(pl.col("row") != "dropout")["status"].unique().to_list() == ["done"]


def test_a_run_trained_from_another_definition_is_marked_stale(tmp_path, plans):
    plan = plans["cuhk-pedes"]
    files = tricks_metrics(tmp_path, plan, "cuhk-pedes")
    write_metrics(tmp_path, "cuhk-pedes", "study_dropout", 12.0, "0" * 64)
    df = study_frame(plan, "cuhk-pedes", files, tables=["tricks"])
    assert df.filter(pl.col("row") == "dropout")["status"].to_list() == ["stale", "stale"]


def test_metrics_of_another_run_or_dataset_are_refused(tmp_path, plans):
    plan = plans["cuhk-pedes"]
    foreign = write_metrics(tmp_path, "cuhk-pedes", "tbps_clip", 70.0, "c" * 64)
    with pytest.raises(UserInputError, match="run 'tbps_clip' is not a run of the study's table"):
        study_frame(plan, "cuhk-pedes", [foreign], tables=["tricks"])
    other = write_metrics(tmp_path, "rstpreid", "study_clip", 70.0, "c" * 64)
    with pytest.raises(UserInputError, match="metrics of dataset 'rstpreid', not 'cuhk-pedes'"):
        study_frame(plan, "cuhk-pedes", [other], tables=["tricks"])


# --------------------------------------------------------------------------- pages, chart and terminal


@pytest.fixture
def tricks_table(tmp_path, plans):
    plan = plans["cuhk-pedes"]
    out = tmp_path / "tricks.parquet"
    study_frame(plan, "cuhk-pedes", tricks_metrics(tmp_path, plan, "cuhk-pedes"), tables=["tricks"]).write_parquet(out)
    return out


def test_page_chart_and_text_show_paper_ours_and_delta(tricks_table, tmp_path):
    df = read_study_table(tricks_table)
    frame = page_frame(df.filter((pl.col("table") == "tricks") & (pl.col("direction") == "t2i")))
    assert frame.columns[:5] == ["row", "vs", "R@1 paper", "R@1 ours", "R@1 Δ"]
    assert frame.row(1, named=True)["vs"] == "CLIP" and frame.row(1, named=True)["gain R@1 paper"] == pytest.approx(2.99)
    write_page(df, "tricks", tmp_path / "tricks.html")
    page = (tmp_path / "tricks.html").read_text()
    assert "Table 1 (training tricks, one at a time on CLIP) on cuhk-pedes: paper | ours | Δ" in page
    assert "<td class=\"num\">63.66</td>" in page and "<td class=\"num\">-52.66</td>" in page
    plot_gains(df, "tricks", tmp_path / "tricks.png")
    assert (tmp_path / "tricks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = text_report(df)
    line = next(x for x in text.splitlines() if x.startswith("+ GlobalGrad"))
    assert line.split() == ["+", "GlobalGrad", "CLIP", "63.66", "11.00", "-52.66", "56.46", "5.50", "-50.96", "+2.99",
                            "+1.00", "done"]
    assert text.endswith("rows: 6 done\n")


def test_tbps_study_show_prints_the_tables(tricks_table, capsys):
    assert main(["study", "show", str(tricks_table), "--table", "tricks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 1 (training tricks, one at a time on CLIP) on cuhk-pedes: text->image")
    assert main(["study", "show", str(tricks_table), "--table", "losses"]) == 2
    assert "no table(s) ['losses'] in this study table" in capsys.readouterr().err
