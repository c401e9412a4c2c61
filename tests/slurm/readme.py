"""The shell commands of the README's "Running on a cluster" section, as the tests run them.

Each Slurm test takes its command from the README and substitutes only what must differ on the
test cluster (file names, the array size, the partition, GPU requests); so a README edit that
breaks a command breaks a test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cluster_commands() -> list[list[str]]:
    """Every command of the section's bash blocks (continuation lines joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Running on a cluster\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Running on a cluster' section followed by another '## ' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
    assert blocks, "README.md's cluster section has no ```bash block"
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def readme_command(*prefix: str) -> list[list[str]]:
    """The section's commands whose first word is ``prefix[0]`` and which contain the other words
    (``readme_command("sbatch", "workflows/slurm/train.sbatch")`` finds ``sbatch --gres=... train.sbatch``)."""
    found = []
    for words in cluster_commands():
        if words[0] == prefix[0] and all(word in words for word in prefix[1:]):
            found.append(words)
    return found


def substituted(words: list[str], replace: dict[str, str]) -> list[str]:
    """The command with whole words replaced; options given as ``--name=`` replace any value."""
    out = []
    for word in words:
        prefix = next((key for key in replace if key.endswith("=") and word.startswith(key)), None)
        out.append(replace[prefix] if prefix else replace.get(word, word))
    return out
