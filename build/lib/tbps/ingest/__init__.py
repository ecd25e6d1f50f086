"""``tbps prepare`` and ``tbps check-raw``: a raw dataset download -> the normalised caption table.

formats      read and validate the published annotation files (structure: fatal problems)
annotations  screen the records (counted skips), write annotations.parquet / rejects.parquet,
             and check a download against the published statistics
image_files  where a raw image may be read from: the confinement rule for paths and symbolic links
"""
