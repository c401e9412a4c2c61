"""Command line, manifests, corpus readers and the stage DAG of cslr-pipe."""
