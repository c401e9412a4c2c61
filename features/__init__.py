"""Video input, pose and flow backends, heatmaps, backbones and the HDF5 shard store.

Nothing here imports cslr_pipe.pipeline or cslr_pipe.training."""
