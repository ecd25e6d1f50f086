"""Data stages: raw annotations, captions, augmentation and shards."""
