"""The paper's empirical study as data (config/study.yaml): every ablation table of TBPS-CLIP.

- :mod:`tbps.study.spec`: the study file, read and checked (tables, rows, the paper's numbers).
- :mod:`tbps.study.plan`: a row on one dataset -> the experiment it trains, rows sharing one
  configuration -> one run (``study_<id>``), the ``--set`` overrides the workflow passes to ``tbps train``.
- :mod:`tbps.study.table`: the runs' metrics -> one row per (table, paper row, split, direction) with the
  paper's numbers, the differences, the gains over the base rows and the runs' provenance.
- :mod:`tbps.study.report`: a table side by side with the paper (HTML page, terminal text) and the chart
  of each row's gain over its base row.
"""

RUN_PREFIX = "study_"
"""Study runs are named ``study_<row id>`` (results/<dataset>/study_<row id>/): never a preset's name."""
