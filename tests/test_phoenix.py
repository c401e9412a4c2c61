"""PHOENIX-2014 / 2014-T cleanup rules, one by one and in sequence, and scoring."""

from __future__ import annotations

import pytest

from cslr_pipe.training import phoenix as ph
from cslr_pipe.training.phoenix import (clean_phoenix2014, clean_phoenix2014t, clean_phoenix2014t_reference,
                                        clean_phoenix2014t_words, score_phoenix, vac_python_align)


# --- PHOENIX-2014 rules, each on its own -------------------------------------------------------

def test_strip_prefixes():
    assert ph.strip_prefixes("loc-REGION cl-KOMMEN qu-WAS poss-EUCH lh-IX") == "REGION KOMMEN WAS EUCH IX"
    # substring replacement as in sed: also inside a gloss
    assert ph.strip_prefixes("neg-loc-X") == "neg-X"
    assert ph.strip_prefixes("neg-HABEN") == "neg-HABEN"


def test_sonne_and_haben2():
    assert ph.fix_sonne("S0NNE SONNE") == "SONNE SONNE"
    assert ph.fix_haben2("HABEN2 HABEN") == "HABEN HABEN"


def test_drop_markers():
    assert ph.drop_markers("A __EMOTION__ B __PU__ __LEFTHAND__") == "A  B  "
    # __ON__ / __OFF__ stay for PHOENIX-2014 (the ground truth keeps them)
    assert ph.drop_markers("__ON__ A __OFF__") == "__ON__ A __OFF__"


def test_wie_aussehen():
    assert ph.join_wie_aussehen("WETTER WIE AUSSEHEN MORGEN") == "WETTER WIE-AUSSEHEN MORGEN"
    assert ph.join_wie_aussehen("WIE IMMER") == "WIE IMMER"


def test_zeigen_everywhere_a_gloss_ends_in_zeigen():
    assert ph.expand_zeigen("ZEIGEN WIND") == "ZEIGEN-BILDSCHIRM WIND"
    assert ph.expand_zeigen("WIND ZEIGEN") == "WIND ZEIGEN-BILDSCHIRM"
    assert ph.expand_zeigen("ZEIGEN") == "ZEIGEN-BILDSCHIRM"
    assert ph.expand_zeigen("ZEIGEN-BILDSCHIRM") == "ZEIGEN-BILDSCHIRM"
    assert ph.expand_zeigen("ANZEIGEN X") == "ANZEIGEN-BILDSCHIRM X"  # no word boundary in sed


def test_join_spelled_letters():
    assert ph.join_spelled_letters("IX S H IX") == "IX S+H IX"
    assert ph.join_spelled_letters("A B C") == "A+B+C"
    assert ph.join_spelled_letters("X A B C Y") == "X A+B+C+Y"
    assert ph.join_spelled_letters("REGEN A B") == "REGEN A+B"
    assert ph.join_spelled_letters("SCH A U") == "SCH A+U"
    assert ph.join_spelled_letters("X SCH A REGEN") == "X SCH+A REGEN"
    assert ph.join_spelled_letters("X SCH A") == "X SCH A"  # needs a following space or +
    assert ph.join_spelled_letters("IX N NN REGEN") == "IX N+NN REGEN"
    assert ph.join_spelled_letters("IX NN A REGEN") == "IX NN+A REGEN"
    # quirks of the official sed sequence, kept on purpose
    assert ph.join_spelled_letters("S H") == "S H"  # a two-letter sentence is left alone
    assert ph.join_spelled_letters("A B C D") == "A B+C+D"
    assert ph.join_spelled_letters("REGEN SONNE") == "REGEN SONNE"


def test_raum_suffix():
    assert ph.strip_raum_suffix("WALDRAUM RAUM ARAUM") == "WALD RAUM ARAUM"


def test_plusplus():
    assert ph.strip_plusplus("KOMMEN-PLUSPLUS REGEN") == "KOMMEN REGEN"


def test_collapse_repeats_only_plain_glosses():
    assert ph.collapse_repeats("REGEN REGEN REGEN SONNE") == "REGEN SONNE"
    assert ph.collapse_repeats("NICHT-VIEL NICHT-VIEL") == "NICHT-VIEL NICHT-VIEL"
    assert ph.collapse_repeats("S+H S+H") == "S+H S+H"
    assert ph.collapse_repeats("__ON__ __ON__") == "__ON__ __ON__"
    assert ph.collapse_repeats(" ".join(["A1"] * 3)) == "A1 A1 A1"
    # four halving passes: a run of 16 collapses, a run of 17 leaves two
    assert ph.collapse_repeats(" ".join(["X"] * 16)) == "X"
    assert ph.collapse_repeats(" ".join(["X"] * 17)) == "X X"


def test_drop_filtered_and_empty_marker():
    assert ph.drop_filtered_glosses("A __EPENTHESIS__ B") == "A B"
    assert ph.mark_empty([]) == ["[EMPTY]"]
    assert ph.mark_empty(["A"]) == ["A"]
    assert ph.collapse_all_repeats(["A", "A", "B-C", "B-C", "A"]) == ["A", "B-C", "A"]


# --- PHOENIX-2014-T rules ---------------------------------------------------------------------

def test_2014t_rules():
    assert ph.drop_all_markers_2014t("__ON__ A __OFF__ __PU__ __EMOTION__").split() == ["A"]
    assert ph.strip_loc_cl_2014t("loc-REGION cl-KOMMEN poss-EUCH") == "REGION KOMMEN poss-EUCH"
    assert ph.strip_plusplus_2014t("KOMMEN-PLUSPLUS") == "KOMMEN"
    assert ph.strip_raum_suffix_2014t("WALDRAUM ARAUM RAUM") == "WALD A RAUM"


# --- whole sentences --------------------------------------------------------------------------

RAW = ("__ON__ loc-REGION S0NNE __EMOTION__ WIE AUSSEHEN ZEIGEN REGEN REGEN IX S H IX "
       "WALDRAUM KOMMEN-PLUSPLUS poss-EUCH HABEN2 NICHT-VIEL NICHT-VIEL __EPENTHESIS__ __OFF__")


def test_full_sentence_phoenix2014():
    assert clean_phoenix2014(RAW) == [
        "__ON__", "REGION", "SONNE", "WIE-AUSSEHEN", "ZEIGEN-BILDSCHIRM", "REGEN", "IX", "S+H", "IX",
        "WALD", "KOMMEN", "EUCH", "HABEN", "NICHT-VIEL", "NICHT-VIEL", "__OFF__",
    ]
    # token-list input is the same as the string
    assert clean_phoenix2014(RAW.split()) == clean_phoenix2014(RAW)
    # neccam/slt's port also collapses every consecutive duplicate
    assert clean_phoenix2014(RAW, collapse_all=True).count("NICHT-VIEL") == 1


def test_full_sentence_phoenix2014t():
    raw = RAW.replace(" __EPENTHESIS__", "")
    assert clean_phoenix2014t(raw) == [
        "REGION", "S0NNE", "WIE-AUSSEHEN", "ZEIGEN", "REGEN", "IX", "S+H", "IX",
        "WALD", "KOMMEN", "poss-EUCH", "HABEN2", "NICHT-VIEL",
    ]


def test_cleanup_is_idempotent_on_released_ground_truth_style():
    # lines in the style of the released PHOENIX-2014 dev STM
    stm_words = [
        "__ON__ TEMPERATUR WIE-AUSSEHEN MORGEN GLEICH SIEBZEHN ACHTZEHN SUEDOST WENN REGEN",
        "NORDOST IX NICHT-VIEL NICHT-VIEL NICHT-WOLKE NICHT-VIEL NICHT-WOLKE ABER SCHAUER __OFF__",
        "__ON__ NORDWEST WOLKE MANCHMAL SONNE BISSCHEN IX S+H IX REGEN __OFF__",
        "AUCH SCHNEE DABEI SCHNEE WARUM HEUTE NACHT KALT ZEIGEN-BILDSCHIRM LEICHT FROST",
    ]
    for line in stm_words:
        assert clean_phoenix2014(line) == line.split()


# --- scoring ----------------------------------------------------------------------------------

def test_score_phoenix2014():
    refs = ["__ON__ REGION WIE-AUSSEHEN REGEN __OFF__", "S+H IX", "MORGEN SONNE"]
    hyps = ["__ON__ loc-REGION WIE AUSSEHEN REGEN REGEN __OFF__", "IX S H", ""]
    d = score_phoenix(refs, hyps, "phoenix2014", scorer="slt")
    # sentence 1 perfect after cleanup; sentence 2: "IX S+H" vs "S+H IX" (2 errors);
    # sentence 3: [EMPTY] vs 2 words (1 substitution + 1 deletion)
    assert d.reference_words == 5 + 2 + 2
    assert d.errors == 2 + 2
    assert d.sentences[2].hypothesis == ["[EMPTY]"]
    assert (d.sentences[2].substitutions, d.sentences[2].deletions) == (1, 1)
    assert d.wer == pytest.approx(4 / 9)
    d0 = score_phoenix(refs, hyps, "phoenix2014", scorer="slt", empty_token=None)
    assert (d0.sentences[2].substitutions, d0.sentences[2].deletions) == (0, 2)
    assert d0.wer == d.wer


def test_score_phoenix2014t_cleans_both_sides():
    refs = ["__ON__ JETZT WETTER WIE AUSSEHEN __OFF__"]
    hyps = ["JETZT WETTER WIE-AUSSEHEN"]
    assert score_phoenix(refs, hyps, "phoenix2014t").wer == 0.0
    # 2014 keeps __ON__/__OFF__: two deletions over five reference words
    assert score_phoenix(refs, hyps, "phoenix2014", scorer="slt").wer == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        score_phoenix(refs, hyps, "csl-daily")
    with pytest.raises(ValueError, match="does not score phoenix2014t"):
        score_phoenix(refs, hyps, "phoenix2014t", scorer="vac-python")


def test_sclite_scorer_cleans_hypotheses_word_by_word_and_leaves_references_alone():
    """evaluatePhoenix2014.sh runs its rules on a CTM file, one word per line (issue's examples)."""
    # spelled letters are not joined: four insertions against an empty-ish reference slot
    d = score_phoenix(["IX"], ["IX O G C V"])
    assert (d.insertions, d.deletions, d.substitutions) == (4, 0, 0)
    assert score_phoenix(["IX"], ["IX O G C V"], scorer="slt").insertions == 1  # O+G+C+V, one word
    # repeats are not collapsed, WIE AUSSEHEN is not joined; one-word rules still apply
    d = score_phoenix(["HEUTE-NACHT WIE-AUSSEHEN ZEIGEN-BILDSCHIRM"],
                      ["loc-HEUTE-NACHT HEUTE-NACHT WIE AUSSEHEN ZEIGEN"])
    assert d.sentences[0].hypothesis == ["HEUTE-NACHT", "HEUTE-NACHT", "WIE", "AUSSEHEN", "ZEIGEN-BILDSCHIRM"]
    assert d.errors == 3  # one insertion, then WIE AUSSEHEN against WIE-AUSSEHEN: S + I (or I + S)
    # references are not cleaned: a repeated reference gloss stays two words
    assert score_phoenix(["MOEGLICH MOEGLICH"], ["MOEGLICH"]).deletions == 1
    assert score_phoenix(["MOEGLICH MOEGLICH"], ["MOEGLICH"], scorer="slt").errors == 0
    # an empty hypothesis after the cleanup is scored as [EMPTY]
    d = score_phoenix(["A B"], ["__EPENTHESIS__ __PU__"])
    assert d.sentences[0].hypothesis == ["[EMPTY]"] and d.errors == 2


def test_vac_python_scorer_merges_hypothesis_repeats_only():
    d = score_phoenix(["REGEN REGEN SONNE"], ["REGEN REGEN SONNE SONNE"], scorer="vac-python")
    assert d.sentences[0].hypothesis == ["REGEN", "SONNE"] and d.deletions == 1 and d.errors == 1
    # weighted costs: D + C + I (6) beats two substitutions (8); on a tie, deletion before insertion
    assert [p.op for p in vac_python_align("A B", "B A").pairs] == ["I", "C", "D"]
    assert [p.op for p in vac_python_align("A B C", "X").pairs] == ["D", "D", "S"]


def test_official_2014t_script_semantics():
    """evaluateWER.sh of PHOENIX-2014-T: the CTM word by word (every repeat dropped), the STM line by line."""
    assert clean_phoenix2014t_words("__ON__ loc-NORDRAUM NORD REGEN REGEN-PLUSPLUS cl-X __EMOTION__ S H") == [
        "NORD", "REGEN", "X", "S", "H"]  # letters are not joined, NORD NORD and REGEN REGEN collapse
    # the reference chain: __ON__ leaves its spaces, so the collapse (one space) keeps "HEUTE HEUTE";
    # no final collapse of every repeat, unlike SLT's port
    ref = "__ON__ HEUTE __OFF__ HEUTE REGEN REGEN WIE AUSSEHEN S H __EMOTION__ loc-NORDRAUM"
    assert clean_phoenix2014t_reference(ref) == ["HEUTE", "HEUTE", "REGEN", "WIE-AUSSEHEN", "S+H", "NORD"]
    assert clean_phoenix2014t(ref) == ["HEUTE", "REGEN", "WIE-AUSSEHEN", "S+H", "NORD"]
    hyp = "HEUTE HEUTE REGEN WIE-AUSSEHEN S+H NORD"
    d = score_phoenix([ref], [hyp], "phoenix2014t", scorer="sclite")
    assert d.sentences[0].hypothesis == ["HEUTE", "REGEN", "WIE-AUSSEHEN", "S+H", "NORD"] and d.deletions == 1
    assert score_phoenix([ref], [hyp], "phoenix2014t").errors == 0  # slt collapses both sides
    assert score_phoenix(["A"], ["__ON__"], "phoenix2014t", scorer="sclite").sentences[0].hypothesis == ["[EMPTY]"]
