"""PHOENIX-2014 / PHOENIX-2014-T gloss cleanup and scoring, as pure functions.

Sources (facts re-implemented, no code copied):

* PHOENIX-2014: the hypothesis cleanup of the dataset's ``evaluatePhoenix2014.sh``, as
  redistributed in ``evaluation/slr_eval/preprocess.sh`` of VIPL-SLP/VAC_CSLR (also used by
  CorrNet, SMKD, SEN and other VAC descendants), followed by ``mergectmstm.py`` (``[EMPTY]``
  for utterances without words) and sclite. A sed/perl pipeline, in this order:
  prefixes ``loc- cl- qu- poss- lh-`` -> ``S0NNE``/``HABEN2`` -> ``__EMOTION__ __PU__
  __LEFTHAND__`` -> ``WIE AUSSEHEN`` / ``ZEIGEN`` -> spelled letters joined with ``+`` ->
  ``RAUM`` suffix -> ``-PLUSPLUS`` -> four passes of the repeated-gloss collapse -> lines with
  ``__LEFTHAND__ __EPENTHESIS__ __EMOTION__`` dropped -> ``[EMPTY]`` for an empty result.
  ``clean_phoenix_2014`` in neccam/slt ``signjoey/phoenix_utils/phoenix_cleanup.py`` is a
  Python port of the same rules in the same order applied to whole sentences (plus a final
  collapse of *all* consecutive duplicates, optional here: ``collapse_all_repeats``).
* PHOENIX-2014-T: ``clean_phoenix_2014_trans`` of neccam/slt (Camgoz, co-author of the 2014-T
  release), the cleanup the SLT / TwoStream-SLR family scores 2014-T with. It differs from
  the 2014 rules: *every* ``__X__`` marker is dropped (so ``__ON__``/``__OFF__`` too), only
  the ``loc-`` and ``cl-`` prefixes are stripped (``poss-``, ``qu-``, ``lh-``, ``neg-`` stay,
  matching the 2014-T ground-truth STM, which keeps e.g. ``poss-EUCH``, ``neg-HABEN``), there
  is no ``S0NNE``/``HABEN2``/``ZEIGEN`` rule, the ``RAUM`` rule needs only one capital before
  ``RAUM`` at the end of a gloss, and all consecutive duplicate glosses are collapsed at the
  end. (The official 2014-T shell script itself was not available to check.)

Notes on the official 2014 pipeline:

* The shell script runs sed over the hypothesis *CTM file*, one word per line, so rules that
  span two words (``WIE AUSSEHEN``, spelled-letter joining, repeated-gloss collapse) can never
  fire there; only the one-word rules change anything, and the references (the released STM) are
  never cleaned. ``score_phoenix``'s default scorer for PHOENIX-2014, ``sclite``, does exactly that
  (:func:`clean_phoenix2014_words`); the ``slt`` scorer applies every rule to whole sentences on
  both sides, as the Python port does. Cleaning the released 2014 STM is not a no-op: it collapses
  repeated references such as ``MOEGLICH MOEGLICH``.
* ``ZEIGEN`` -> ``ZEIGEN-BILDSCHIRM`` applies to every gloss ending in ``ZEIGEN`` (patterns
  ``ZEIGEN `` and ``ZEIGEN$``; in the CTM every word ends its line), whatever its neighbours.
* Spelled letters are joined with ``+`` (``S H`` -> ``S+H``), not concatenated; the sed
  sequence has quirks that are kept (e.g. ``A B C D`` -> ``A B+C+D``).
* The prefix rules, ``S0NNE``, ``HABEN2`` and ``RAUM`` are substring replacements (no word
  boundaries), exactly as in sed.
* Regexes use ASCII classes (``[A-Z]``, ``\\w``), as perl and sed do on byte strings.

Every rule below is a function ``str -> str`` on a space-separated gloss sentence; the
``clean_*`` functions take a string or a token list and return a token list.
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Iterable, Literal, Sequence, Union

from cslr_pipe.features.errors import InputError

from .metrics import SentenceAlignment, WERDetails, alignment_from_ops, wer_details
from .sclite import sclite_wer

Glosses = Union[str, Sequence[str]]

EMPTY = "[EMPTY]"

__all__ = [
    "EMPTY",
    "clean_phoenix2014",
    "clean_phoenix2014t",
    "SCORERS",
    "clean_phoenix2014_words",
    "clean_phoenix2014t_reference",
    "clean_phoenix2014t_words",
    "score_phoenix",
    "vac_python_align",
    "strip_prefixes",
    "fix_sonne",
    "fix_haben2",
    "drop_markers",
    "join_wie_aussehen",
    "expand_zeigen",
    "join_spelled_letters",
    "strip_raum_suffix",
    "strip_plusplus",
    "squeeze_spaces",
    "collapse_repeats",
    "drop_filtered_glosses",
    "collapse_all_repeats",
    "mark_empty",
    "drop_all_markers_2014t",
    "strip_loc_cl_2014t",
    "strip_plusplus_2014t",
    "strip_raum_suffix_2014t",
]

_A = re.ASCII


def _sub(pattern: str, repl: str, text: str) -> str:
    return re.sub(pattern, repl, text, flags=_A)


# ---------------------------------------------------------------------------------------------
# PHOENIX-2014 rules (official order)


def strip_prefixes(text: str) -> str:
    """Delete ``loc-``, ``cl-``, ``qu-``, ``poss-``, ``lh-`` (in this order, anywhere)."""
    for prefix in ("loc-", "cl-", "qu-", "poss-", "lh-"):
        text = text.replace(prefix, "")
    return text


def fix_sonne(text: str) -> str:
    """``S0NNE`` (with a zero) -> ``SONNE``."""
    return text.replace("S0NNE", "SONNE")


def fix_haben2(text: str) -> str:
    """``HABEN2`` -> ``HABEN``."""
    return text.replace("HABEN2", "HABEN")


def drop_markers(text: str) -> str:
    """Delete ``__EMOTION__``, ``__PU__``, ``__LEFTHAND__`` (leaves extra spaces)."""
    for marker in ("__EMOTION__", "__PU__", "__LEFTHAND__"):
        text = text.replace(marker, "")
    return text


def join_wie_aussehen(text: str) -> str:
    """``WIE AUSSEHEN`` -> ``WIE-AUSSEHEN``."""
    return text.replace("WIE AUSSEHEN", "WIE-AUSSEHEN")


def expand_zeigen(text: str) -> str:
    """``ZEIGEN`` followed by a space or the end -> ``ZEIGEN-BILDSCHIRM``."""
    text = text.replace("ZEIGEN ", "ZEIGEN-BILDSCHIRM ")
    return _sub(r"ZEIGEN$", "ZEIGEN-BILDSCHIRM", text)


_LETTER_RULES = (
    (r"^([A-Z]) ([A-Z][+ ])", r"\1+\2"),
    (r"[ +]([A-Z]) ([A-Z]) ", r" \1+\2 "),
    (r"([ +][A-Z]) ([A-Z][ +])", r"\1+\2"),
    (r"([ +][A-Z]) ([A-Z][ +])", r"\1+\2"),
    (r"([ +][A-Z]) ([A-Z][ +])", r"\1+\2"),
    (r"([ +]SCH) ([A-Z][ +])", r"\1+\2"),
    (r"([ +]NN) ([A-Z][ +])", r"\1+\2"),
    (r"([ +][A-Z]) (NN[ +])", r"\1+\2"),
    (r"([ +][A-Z]) ([A-Z])$", r"\1+\2"),
)


def join_spelled_letters(text: str) -> str:
    """Join fingerspelled single letters with ``+`` (``S H`` -> ``S+H``; also ``SCH``/``NN``
    pieces), by the nine sed substitutions of the official script in their order."""
    for pattern, repl in _LETTER_RULES:
        text = _sub(pattern, repl, text)
    return text


def strip_raum_suffix(text: str) -> str:
    """``XYRAUM`` -> ``XY`` when at least two capitals precede ``RAUM`` (``RAUM`` alone stays)."""
    return _sub(r"([A-Z][A-Z])RAUM", r"\1", text)


def strip_plusplus(text: str) -> str:
    """Delete ``-PLUSPLUS``."""
    return text.replace("-PLUSPLUS", "")


def squeeze_spaces(text: str) -> str:
    """Runs of spaces -> one space (the Python port does this; sed/sclite split on spaces)."""
    return _sub(r" +", " ", text)


_REPEAT = r"(?<![\w-])(\b[A-Z]+(?![\w-])) \1(?![\w-])"


def collapse_repeats(text: str, passes: int = 4) -> str:
    """Collapse a gloss repeated back to back (``REGEN REGEN`` -> ``REGEN``), only for plain
    capital-letter glosses (not ``NICHT-VIEL``, ``S+H``, ``__ON__``, ``loc-X``...). The official
    perl rule runs four times; each pass halves a run, so runs up to 16 collapse fully."""
    for _ in range(passes):
        text = _sub(_REPEAT, r"\1", text)
    return text


def drop_filtered_glosses(text: str) -> str:
    """Drop glosses that the official script removes with ``grep -v`` (one CTM line per word):
    any containing ``__LEFTHAND__``, ``__EPENTHESIS__`` or ``__EMOTION__``."""
    bad = ("__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__")
    return " ".join(t for t in text.split(" ") if not any(b in t for b in bad))


def collapse_all_repeats(tokens: Sequence[str]) -> list[str]:
    """Collapse every run of identical consecutive glosses (the Python ports' final step)."""
    return [k for k, _ in groupby(tokens)]


def mark_empty(tokens: Sequence[str], empty: str = EMPTY) -> list[str]:
    """An empty hypothesis becomes the single word ``[EMPTY]`` (official preprocess/mergectmstm)."""
    return list(tokens) if tokens else [empty]


def _as_text(glosses: Glosses) -> str:
    if isinstance(glosses, str):
        return glosses.strip()
    return " ".join(str(g) for g in glosses).strip()


def clean_phoenix2014(glosses: Glosses, *, collapse_all: bool = False) -> list[str]:
    """PHOENIX-2014 cleanup in the official order; returns the remaining glosses (possibly none:
    ``mark_empty`` adds ``[EMPTY]`` as the scoring does). ``collapse_all=True`` adds the final
    collapse of all consecutive duplicates that neccam/slt's port applies."""
    text = _as_text(glosses)
    text = strip_prefixes(text)
    text = fix_sonne(text)
    text = fix_haben2(text)
    text = drop_markers(text)
    text = join_wie_aussehen(text)
    text = expand_zeigen(text)
    text = join_spelled_letters(text)
    text = strip_raum_suffix(text)
    text = strip_plusplus(text)
    text = squeeze_spaces(text)
    text = collapse_repeats(text)
    text = squeeze_spaces(text)
    text = drop_filtered_glosses(text)
    tokens = text.split()
    return collapse_all_repeats(tokens) if collapse_all else tokens


# ---------------------------------------------------------------------------------------------
# PHOENIX-2014-T rules (neccam/slt clean_phoenix_2014_trans order)


def drop_all_markers_2014t(text: str) -> str:
    """Delete ``__LEFTHAND__``, ``__EPENTHESIS__``, ``__EMOTION__``, then every whole-word
    ``__X__`` marker (``__ON__``, ``__OFF__``, ``__PU__``, ...)."""
    for marker in ("__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__"):
        text = text.replace(marker, "")
    return _sub(r"\b__[^_ ]*__\b", "", text)


def strip_loc_cl_2014t(text: str) -> str:
    """Delete ``loc-`` and ``cl-`` at the start of a gloss (word boundary before them)."""
    text = _sub(r"\bloc-([^ ]*)\b", r"\1", text)
    return _sub(r"\bcl-([^ ]*)\b", r"\1", text)


def strip_plusplus_2014t(text: str) -> str:
    """``X-PLUSPLUS`` -> ``X`` at the end of a gloss."""
    return _sub(r"\b([^ ]*)-PLUSPLUS\b", r"\1", text)


def strip_raum_suffix_2014t(text: str) -> str:
    """``XRAUM`` -> ``X`` for capitals ``X`` (at least one) when ``RAUM`` ends the word."""
    return _sub(r"\b([A-Z][A-Z]*)RAUM\b", r"\1", text)


def clean_phoenix2014t(glosses: Glosses) -> list[str]:
    """PHOENIX-2014-T cleanup (neccam/slt ``clean_phoenix_2014_trans`` order); returns the
    remaining glosses (possibly none)."""
    text = _as_text(glosses)
    text = drop_all_markers_2014t(text)
    text = strip_loc_cl_2014t(text)
    text = strip_plusplus_2014t(text)
    text = strip_raum_suffix_2014t(text)
    text = join_wie_aussehen(text)
    text = join_spelled_letters(text)
    text = squeeze_spaces(text)
    text = collapse_repeats(text)
    text = squeeze_spaces(text)
    return collapse_all_repeats(text.split())


# ---------------------------------------------------------------------------------------------
# Scoring

Variant = Literal["phoenix2014", "phoenix2014t"]

#: Scorers per variant, the default first (docs/evaluation.md says which papers use which).
SCORERS = {"phoenix2014": ("sclite", "vac-python", "slt"), "phoenix2014t": ("slt", "sclite")}


def clean_phoenix2014_words(glosses: Glosses) -> list[str]:
    """The official script's semantics: its sed/perl chain runs on the hypothesis CTM file, one
    word per line, so each word is cleaned on its own and the rules written for word pairs
    (``WIE AUSSEHEN``, spelled letters, the repeated-gloss collapse) never fire."""
    return [token for word in _as_text(glosses).split() for token in clean_phoenix2014(word)]


def clean_phoenix2014t_words(glosses: Glosses) -> list[str]:
    """The hypothesis side of PHOENIX-2014-T's official ``evaluateWER.sh``, which runs on the CTM file,
    one word per line: words containing ``__LEFTHAND__``, ``__EPENTHESIS__`` or ``__EMOTION__`` and
    whole ``__X__`` markers are dropped; ``loc-`` at the start, ``-PLUSPLUS`` at the end, ``cl-`` at
    the start and ``RAUM`` after capitals at the end are stripped; a word left empty is dropped;
    then a word equal to the previous one is dropped (every repeat, not only plain glosses)."""
    words = []
    for word in _as_text(glosses).split():
        if any(m in word for m in ("__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__")) or re.fullmatch(r"__[^_ ]*__", word):
            continue
        word = _sub(r"^loc-", "", word)
        word = _sub(r"-PLUSPLUS$", "", word)
        word = _sub(r"^cl-", "", word)
        word = _sub(r"\b([A-Z][A-Z]*)RAUM$", r"\1", word)
        if word:
            words.append(word)
    return collapse_all_repeats(words)


def clean_phoenix2014t_reference(glosses: Glosses) -> list[str]:
    """The reference side of PHOENIX-2014-T's official ``evaluateWER.sh``: its chain runs on each STM
    line, where every word follows a space. The three markers go with one neighbouring space, the
    other ``__X__`` markers leave theirs (so ``A __ON__ A`` is no repeat for the collapse, which needs
    one space), then ``loc-``/``cl-``, ``-PLUSPLUS``, ``RAUM``, ``WIE AUSSEHEN``, spelled letters and
    four passes of the plain-gloss collapse, as :func:`clean_phoenix2014t` but without its final
    collapse of every repeat and without squeezing spaces."""
    text = " " + _as_text(glosses)
    for marker in ("__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__"):
        text = text.replace(marker + " ", "").replace(" " + marker, "")
    text = _sub(r"\b__[^_ ]*__\b", "", text)
    for rule in (strip_loc_cl_2014t, strip_plusplus_2014t, strip_raum_suffix_2014t, join_wie_aussehen,
                 join_spelled_letters, collapse_repeats):
        text = rule(text)
    return text.split()


def vac_python_align(reference: Glosses, hypothesis: Glosses) -> SentenceAlignment:
    """One sentence as VAC/CorrNet's ``python_wer_evaluation`` scores it: consecutive duplicates of
    the hypothesis merged (``merge_same``), weights insertion 3, deletion 3, substitution 4; a cell
    whose words match always takes the diagonal, any other takes the cheapest of substitution,
    deletion, insertion (in that order on ties); traced back from the end, the rest of a row or
    column being deletions or insertions at the start."""
    ref, hyp = _as_text(reference).split(), collapse_all_repeats(_as_text(hypothesis).split())
    m, n = len(ref), len(hyp)
    cost = [[3 * j for j in range(n + 1)]] + [[3 * i] + [0] * n for i in range(1, m + 1)]
    move = [[""] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            if ref[i - 1] == hyp[j - 1]:
                cost[i][j], move[i][j] = cost[i - 1][j - 1], "C"
            else:
                options = ((cost[i - 1][j - 1] + 4, "S"), (cost[i - 1][j] + 3, "D"), (cost[i][j - 1] + 3, "I"))
                cost[i][j], move[i][j] = min(options, key=lambda option: option[0])
    ops, i, j = [], m, n
    while i and j:
        op = move[i][j]
        ops.append(op)
        i, j = i - (op != "I"), j - (op != "D")
    ops += ["D"] * i + ["I"] * j
    return alignment_from_ops(ref, hyp, ops[::-1])


def score_phoenix(
    refs: Iterable[Glosses],
    hyps: Iterable[Glosses],
    variant: Variant = "phoenix2014",
    *,
    scorer: str | None = None,
    empty_token: str | None = EMPTY,
) -> WERDetails:
    """WER of hypotheses against references as a published PHOENIX number is made.

    ``scorer`` (default: the first of ``SCORERS[variant]``):

    * ``sclite`` (PHOENIX-2014): ``evaluatePhoenix2014.sh`` + sclite: hypotheses cleaned word by
      word (:func:`clean_phoenix2014_words`), ``[EMPTY]`` for an empty one, references untouched
      (pass the released STM's words), sclite's weighted alignment (:mod:`.sclite`).
    * ``sclite`` (PHOENIX-2014-T): the release's official ``evaluateWER.sh`` + sclite: hypotheses
      cleaned word by word with every repeat dropped (:func:`clean_phoenix2014t_words`), references
      cleaned by its STM chain (:func:`clean_phoenix2014t_reference`), ``[EMPTY]``, sclite's alignment.
    * ``vac-python`` (PHOENIX-2014): VAC/CorrNet's Python scorer: the same per-word cleanup and
      ``[EMPTY]``, untouched references, then :func:`vac_python_align`.
    * ``slt``: SLT / TwoStream-SLR's port: the variant's cleanup on whole sentences, on both sides,
      plain Levenshtein; ``[EMPTY]`` for an empty hypothesis unless ``empty_token`` is None (an
      empty hypothesis then costs one substitution plus deletions instead of deletions only).
    """
    key = variant.lower().replace("-", "").replace("_", "")
    if key not in SCORERS:
        raise InputError(f"unknown variant {variant!r}; expected 'phoenix2014' or 'phoenix2014t'")
    scorer = scorer or SCORERS[key][0]
    if scorer not in SCORERS[key]:
        raise InputError(f"scorer {scorer!r} does not score {key}; it has {', '.join(SCORERS[key])}")
    if scorer == "slt":
        clean = clean_phoenix2014 if key == "phoenix2014" else clean_phoenix2014t
        refs_c = [clean(r) for r in refs]
        hyps_c = [clean(h) for h in hyps]
        if empty_token is not None:
            hyps_c = [mark_empty(h, empty_token) for h in hyps_c]
        return wer_details(refs_c, hyps_c)
    if key == "phoenix2014t":  # scorer "sclite": the official evaluateWER.sh
        refs_w = [clean_phoenix2014t_reference(r) for r in refs]
        return sclite_wer(refs_w, [mark_empty(clean_phoenix2014t_words(h), EMPTY) for h in hyps])
    refs_w = [_as_text(r).split() for r in refs]
    hyps_w = [mark_empty(clean_phoenix2014_words(h), EMPTY) for h in hyps]
    if scorer == "sclite":
        return sclite_wer(refs_w, hyps_w)
    return wer_details(refs_w, hyps_w, vac_python_align)
