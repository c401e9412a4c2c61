"""Options several commands share, and KEY=VALUE option parsing (values read as YAML scalars)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cslr_pipe.pipeline.errors import fail_usage

HEATMAP_PRESETS = ("signvtcl", "slrt-phoenix", "slrt-csl-daily")  # features.heatmaps.PRESETS (torch-free help)


def stage_options(function):
    """Options shared by every stage command (one stage over a manifest, or one array task)."""
    options = [
        click.option("--manifest", "manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Manifest (JSON Lines) of the videos to process."),
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Cache folder; results go to OUT/<stage>/."),
        click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder that relative video paths start from [default: the manifest's folder]."),
        click.option("--shard-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Videos per shard (keep it equal across stages and re-runs)."),
        click.option("--shard-index", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Run only shards k with k % num-shards == shard-index (Slurm: $SLURM_ARRAY_TASK_ID)."),
        click.option("--num-shards", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Number of array tasks sharing the work (Slurm: $SLURM_ARRAY_TASK_COUNT)."),
        click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip",
                     show_default=True, help="HDF5 compression of the shards."),
        click.option("--force", is_flag=True, help="Recompute shards that are already complete."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def yaml_error_line(source: Path | str, error: Exception) -> str:
    """One line for a YAML file that safe_load refused or could not parse, naming the place."""
    import yaml

    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else f"{source}"
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    tag = re.search(r"tag '([^']*)'", problem)
    if isinstance(error, yaml.constructor.ConstructorError) and tag:
        return (f"{where}: tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')} refused: YAML is read with "
                f"safe_load, which builds no Python objects, so nothing in it was run")
    return f"{where}: not valid YAML ({problem})"


def parse_options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs into a dict; values are read as YAML scalars (1, 0.5, true, text)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail_usage(f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            fail_usage(yaml_error_line(f"option {pair!r}", error))
    return options


weights_option = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                              help="Weights file of the backend [default: its usual name in the "
                                   "torch hub cache].")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where models run; auto = CUDA when present.")
