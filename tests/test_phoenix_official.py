"""`score_phoenix(scorer="sclite")` against the official PHOENIX evaluation chains run for real.

Reference: the official scripts' procedure executed as they execute it - GNU sed / perl / grep over
the hypothesis CTM file (one word per line) and the STM file, empty results filled with
``[EMPTY]``, then the NIST sclite binary. The rules are written out here in sed's extended
syntax, independently of the Python regexes in ``cslr_pipe.training.phoenix``. Thousands of random
PHOENIX-like sentences carry every cleanup case: prefixes, markers, split compounds, spelled
letters, ``RAUM`` and ``-PLUSPLUS`` suffixes, repeats, case changes, umlauts, empty hypotheses.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from cslr_pipe.training.metrics import write_ctm, write_stm
from cslr_pipe.training.phoenix import score_phoenix

CLEAN = ["__ON__", "__OFF__", "REGEN", "SONNE", "WOLKE", "NORD", "SUED", "MORGEN", "IX", "WIND", "HEUTE",
         "NACHT", "MOEGLICH", "REGION", "WIE-AUSSEHEN", "ZEIGEN-BILDSCHIRM", "S+H", "A+B+C", "NICHT-VIEL",
         "KOMMEN", "EUCH", "HABEN", "RAUM", "WALD", "poss-EUCH", "neg-HABEN", "ÜBER"]
#: how a recogniser trained on raw annotations writes a clean gloss
RAW_FORM = {"REGION": "loc-REGION", "SONNE": "S0NNE", "HABEN": "HABEN2", "WIE-AUSSEHEN": "WIE AUSSEHEN",
            "ZEIGEN-BILDSCHIRM": "ZEIGEN", "S+H": "S H", "A+B+C": "A B C", "WALD": "WALDRAUM",
            "NORD": "NORDRAUM", "KOMMEN": "KOMMEN-PLUSPLUS", "EUCH": "poss-EUCH", "IX": "lh-IX",
            "REGEN": "Regen", "ÜBER": "über", "MORGEN": "cl-MORGEN", "SUED": "loc-SUEDRAUM"}
NOISE = ["__EMOTION__", "__PU__", "__LEFTHAND__", "__EPENTHESIS__", "__ON__", "__OFF__", "S", "H", "A", "B",
         "O", "G", "SCH", "NN", "ANZEIGEN", "ARAUM", "ÜBERRAUM", "qu-WAS", "neg-loc-NORD", "-PLUSPLUS", "loc-",
         "X__EMOTION__", "regen", "WIE", "AUSSEHEN", "ZEIGEN", "cl-KOMMEN-PLUSPLUS", "WALD-NORDRAUM"]


def _noisy(rng: random.Random, words: list[str]) -> list[str]:
    out = []
    for word in words:
        x = rng.random()
        if x < 0.1:
            continue
        out.extend((RAW_FORM.get(word, word) if x < 0.5 else rng.choice(CLEAN + NOISE) if x < 0.6 else word).split())
        if rng.random() < 0.15:  # repeats and inserted noise
            out.extend(rng.choice([[out[-1]] if out else [], [out[-1]] * 3 if out else [], [rng.choice(NOISE)]]))
    return out


def _corpus(seed: int, size: int, raw_references: bool):
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(size):
        base = [rng.choice(CLEAN) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.2:
            k = rng.randrange(len(base))
            base[k:k] = [base[k]] * rng.randint(1, 2)
        refs.append(_noisy(rng, base) if raw_references else base)
        kind = rng.random()
        if kind < 0.1:
            hyps.append([])
        elif kind < 0.15:
            hyps.append([rng.choice(["__EPENTHESIS__", "__PU__", "__ON__", "__EMOTION__", "loc-"])
                         for _ in range(rng.randint(1, 3))])
        elif kind < 0.75:
            hyps.append(_noisy(rng, base))
        else:
            hyps.append(" ".join(rng.choice(CLEAN + NOISE + list(RAW_FORM.values())) for _ in range(rng.randint(1, 15))).split())
    return refs, hyps


def _sh(script: str, stdin: Path, stdout: Path) -> None:
    with open(stdin, "rb") as src, open(stdout, "wb") as dst:
        subprocess.run(["bash", "-c", script], stdin=src, stdout=dst, check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})


def _sed(*rules: str) -> str:
    return "sed -E " + " ".join(f"-e '{rule}'" for rule in rules)


LETTERS = [r"s/^([A-Z]) ([A-Z][+ ])/\1+\2/g", r"s/[ +]([A-Z]) ([A-Z]) / \1+\2 /g"] \
    + [r"s/([ +][A-Z]) ([A-Z][ +])/\1+\2/g"] * 3 \
    + [r"s/([ +]SCH) ([A-Z][ +])/\1+\2/g", r"s/([ +]NN) ([A-Z][ +])/\1+\2/g",
       r"s/([ +][A-Z]) (NN[ +])/\1+\2/g", r"s/([ +][A-Z]) ([A-Z])$/\1+\2/g"]
COLLAPSE = "perl -pe '" + r"s/(?<![\w-])(\b[A-Z]+(?![\w-])) \1(?![\w-])/\1/g;" * 4 + "'"
KEEP_WORDS = r"sed -E 's/[[:space:]]+$//' | awk 'NF >= 5'"  # a word cleaned away leaves its line empty

#: evaluatePhoenix2014.sh on the hypothesis CTM
HYP_2014 = " | ".join([
    _sed("s/loc-//g", "s/cl-//g", "s/qu-//g", "s/poss-//g", "s/lh-//g", "s/S0NNE/SONNE/g", "s/HABEN2/HABEN/g",
         "s/__EMOTION__//g", "s/__PU__//g", "s/__LEFTHAND__//g", "s/WIE AUSSEHEN/WIE-AUSSEHEN/g",
         "s/ZEIGEN /ZEIGEN-BILDSCHIRM /g", "s/ZEIGEN$/ZEIGEN-BILDSCHIRM/", *LETTERS,
         r"s/([A-Z][A-Z])RAUM/\1/g", "s/-PLUSPLUS//g"),
    COLLAPSE, "grep -v __LEFTHAND__", "grep -v __EPENTHESIS__", "grep -v __EMOTION__", KEEP_WORDS,
])
#: PHOENIX-2014-T's evaluateWER.sh on the hypothesis CTM: the line's word is its last field
HYP_2014T = " | ".join([
    "grep -v __LEFTHAND__", "grep -v __EPENTHESIS__", "grep -v __EMOTION__", "grep -v -E ' __[^_ ]*__$'",
    _sed(r"s/ loc-([^ ]*)$/ \1/", "s/-PLUSPLUS$//", r"s/ cl-([^ ]*)$/ \1/", r"s/\b([A-Z][A-Z]*)RAUM$/\1/"),
    KEEP_WORDS, "awk '$1 != id || $NF != word { print } { id = $1; word = $NF }'",
])
#: PHOENIX-2014-T's evaluateWER.sh on the reference STM lines
REF_2014T = " | ".join([
    _sed("s/__LEFTHAND__ //g", "s/ __LEFTHAND__//g", "s/ __EPENTHESIS__//g", "s/__EPENTHESIS__ //g",
         "s/ __EMOTION__//g", "s/__EMOTION__ //g", r"s/\b__[^_ ]*__\b//g", r"s/\bloc-([^ ]*)\b/\1/g",
         r"s/\bcl-([^ ]*)\b/\1/g", r"s/\b([^ ]*)-PLUSPLUS\b/\1/g", r"s/\b([A-Z][A-Z]*)RAUM\b/\1/g",
         "s/WIE AUSSEHEN/WIE-AUSSEHEN/g", *LETTERS),
    COLLAPSE,
])


def _fill_empty(ctm: Path, ids: list[str]) -> None:
    """``[EMPTY]`` for every utterance left without a line, then sorted by utterance (as the scripts'
    awk step and ``mergectmstm.py`` do)."""
    lines = ctm.read_text(encoding="utf-8").splitlines()
    present = {line.split()[0] for line in lines}
    lines += [f"{i} 1 0.00 0.01 [EMPTY]" for i in ids if i not in present]
    lines.sort(key=lambda line: (line.split()[0], float(line.split()[2])))
    ctm.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.mark.parametrize("variant, seed", [("phoenix2014", 2014), ("phoenix2014t", 2015)])
def test_sclite_scorer_equals_the_official_chain_and_sclite(run_sclite, tmp_path, variant, seed):
    refs, hyps = _corpus(seed, 3000, raw_references=variant == "phoenix2014t")
    ids = [f"{k:04d}April_2010_Thursday_heute_default-{k % 7}" for k in range(len(refs))]
    write_ctm(tmp_path / "raw.ctm", ids, hyps, empty_token=None)
    write_stm(tmp_path / "raw.stm", ids, refs, speakers="Signer05")
    _sh(HYP_2014 if variant == "phoenix2014" else HYP_2014T, tmp_path / "raw.ctm", tmp_path / "hyp.ctm")
    _fill_empty(tmp_path / "hyp.ctm", ids)
    if variant == "phoenix2014":
        (tmp_path / "ref.stm").write_bytes((tmp_path / "raw.stm").read_bytes())  # references untouched
    else:
        _sh(REF_2014T, tmp_path / "raw.stm", tmp_path / "ref.stm")
    theirs = run_sclite(tmp_path / "hyp.ctm", tmp_path / "ref.stm")

    ours = score_phoenix(refs, hyps, variant, scorer="sclite")
    mismatches = []
    for k, sentence in enumerate(ours.sentences):
        mine = [(p.op, p.ref and p.ref.lower(), p.hyp and p.hyp.lower()) for p in sentence.pairs]
        official = [(op, r and r.lower(), h and h.lower()) for op, r, h in theirs.alignments[ids[k].lower()]]
        if mine != official:
            mismatches.append((k, refs[k], hyps[k], mine, official))
    assert not mismatches, f"{len(mismatches)} sentences differ from the official chain, first: {mismatches[0]}"
    assert {key: getattr(ours, key) for key in theirs.totals} == theirs.totals
    assert round(100 * ours.wer, 1) == pytest.approx(theirs.percent, abs=0.051)
    # the corpus exercises the cleanup: the official chain changed many hypotheses
    assert sum(s.hypothesis != h for s, h in zip(ours.sentences, hyps)) > 1000
