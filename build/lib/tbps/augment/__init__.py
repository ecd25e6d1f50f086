"""``tbps augment``: one paraphrase per training caption -> ``captions_aug.parquet``.

stage           read the captions, run a backend over the distinct ones, write the table
backends        the backend interface, the ``none`` backend and the backend factory
cache           the SQLite cache of computed paraphrases
synonyms        the offline ``synonyms`` backend (a shipped table of true synonyms)
backtranslation the ``backtranslation`` backend (MarianMT English -> French -> English)
"""
