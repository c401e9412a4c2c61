"""Trainers that read the cached tensors: datasets over shards, models, decoding and WER."""
