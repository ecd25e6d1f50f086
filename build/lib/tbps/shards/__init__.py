"""``tbps shards plan|write|manifest``: deterministic WebDataset shards, and reading them back.

layout    the shard contract: file names, sample keys, allowed tar members
plan      which images go into which shard (``tbps shards plan``)
writer    one planned shard -> tar + sidecar (``tbps shards write``); ``write_split`` runs all three steps
manifest  check every shard against its sidecar and write manifest.json (``tbps shards manifest``)
samples   the one reader of a shard's tar members, with every check and message
reader    the manifest (checked against every shard), streaming a split's samples in order (evaluation)
index     where every sample lies in the shards, for random access (training)
"""
