"""Corpus readers on tiny fixture corpora written in the official annotation formats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cslr_pipe.pipeline.corpora import (READERS, read_csl_daily, read_phoenix2014,
                                        read_phoenix2014t)
from cslr_pipe.features.manifest import BadRow, ManifestError, ManifestRow

FRAMES = "features/fullFrame-210x260px"
P14_HEADER = "id|folder|signer|annotation"
P14T_HEADER = "name|video|start|end|speaker|orth|translation"
CSL_MAP_HEADER = "index|name|length|gloss|char|word|postag"
CSL_SPLIT_HEADER = "name|split"


def write_table(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))
    return path


def write_frames(folder: Path, ext: str = ".png", count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"images{i + 1:04d}{ext}"), np.full((8, 8, 3), 40 * i, np.uint8))
    return folder


def p14_file(root: Path, split: str) -> Path:
    return root / "annotations" / "manual" / f"{split}.corpus.csv"


def p14t_file(root: Path, split: str) -> Path:
    return root / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv"


def make_phoenix2014(root: Path, lines: dict[str, list[str]]) -> None:
    for split in ("train", "dev", "test"):
        write_table(p14_file(root, split), [P14_HEADER, *lines.get(split, [])])


def make_phoenix2014t(root: Path, lines: dict[str, list[str]]) -> None:
    for split in ("train", "dev", "test"):
        write_table(p14t_file(root, split), [P14T_HEADER, *lines.get(split, [])])


def p14_line(video_id: str, signer: str = "Signer04", annotation: str = "REGEN") -> str:
    return f"{video_id}|{video_id}/1/*.png|{signer}|{annotation}"


def p14t_line(name: str, speaker: str, orth: str, translation: str) -> str:
    return f"{name}|{name}/1/*.png|-1|-1|{speaker}|{orth}|{translation}"


def csl_map_line(index: int, name: str, length: int, gloss: str, char: str, word: str) -> str:
    return f"{index}|{name}|{length}|{gloss}|{char}|{word}|r v w"


def make_csl(root: Path, map_lines: list[str], split_lines: list[str], label_dir: str = "") -> None:
    write_table(root / label_dir / "video_map.txt", [CSL_MAP_HEADER, *map_lines])
    write_table(root / label_dir / "split_1.txt", [CSL_SPLIT_HEADER, *split_lines])


def located(bad_rows: list[BadRow]) -> list[tuple[str, int]]:
    return [(Path(bad.file).name, bad.line) for bad in bad_rows]


# --- PHOENIX-2014 ---------------------------------------------------------------------------

def test_phoenix2014_reads_every_split_with_exact_fields(tmp_path):
    make_phoenix2014(tmp_path, {
        "train": [p14_line("01April_2010_Thursday_heute_default-0", "Signer04",
                           "__ON__ LIEB ZUSCHAUER loc-NORD REGEN"),
                  p14_line("01April_2010_Thursday_heute_default-1", "Signer01", "JETZT WETTER")],
        "dev": [p14_line("01April_2011_Friday_tagesschau_default-0", "Signer05", "MORGEN SONNE")],
        "test": [p14_line("01April_2011_Friday_tagesschau_default-8", "Signer08", "")],
    })
    bad: list[BadRow] = []
    rows = read_phoenix2014(tmp_path, bad)
    assert bad == []
    assert rows == [
        ManifestRow("01April_2010_Thursday_heute_default-0", "train",
                    f"{FRAMES}/train/01April_2010_Thursday_heute_default-0/1",
                    ("__ON__", "LIEB", "ZUSCHAUER", "loc-NORD", "REGEN"), signer="Signer04",
                    fps=25.0, dataset="phoenix2014"),
        ManifestRow("01April_2010_Thursday_heute_default-1", "train",
                    f"{FRAMES}/train/01April_2010_Thursday_heute_default-1/1", ("JETZT", "WETTER"),
                    signer="Signer01", fps=25.0, dataset="phoenix2014"),
        ManifestRow("01April_2011_Friday_tagesschau_default-0", "dev",
                    f"{FRAMES}/dev/01April_2011_Friday_tagesschau_default-0/1", ("MORGEN", "SONNE"),
                    signer="Signer05", fps=25.0, dataset="phoenix2014"),
        ManifestRow("01April_2011_Friday_tagesschau_default-8", "test",
                    f"{FRAMES}/test/01April_2011_Friday_tagesschau_default-8/1", (),
                    signer="Signer08", fps=25.0, dataset="phoenix2014"),
    ]
    assert all(row.num_frames is None and row.translation is None for row in rows)


def test_phoenix2014_check_files_reports_missing_frames_and_keeps_the_rest(tmp_path):
    make_phoenix2014(tmp_path, {"train": [p14_line("a"), p14_line("b")], "dev": [p14_line("c")]})
    write_frames(tmp_path / FRAMES / "train" / "a" / "1")
    write_frames(tmp_path / FRAMES / "dev" / "c" / "1")
    (tmp_path / FRAMES / "train" / "b" / "1").mkdir(parents=True)  # a folder without images
    bad: list[BadRow] = []
    rows = read_phoenix2014(tmp_path, bad, check_files=True)
    assert [(r.id, r.video) for r in rows] == [("a", f"{FRAMES}/train/a/1"), ("c", f"{FRAMES}/dev/c/1")]
    assert located(bad) == [("train.corpus.csv", 3)]
    assert bad[0].file == str(p14_file(tmp_path, "train"))
    assert str(tmp_path / FRAMES / "train" / "b" / "1") in bad[0].reason
    # without check_files nothing on disk is looked at
    assert [r.id for r in read_phoenix2014(tmp_path, [])] == ["a", "b", "c"]


def test_phoenix2014_frames_override_inside_and_outside_root(tmp_path):
    root = tmp_path / "phoenix-2014-multisigner"
    make_phoenix2014(root, {"train": [p14_line("a")]})
    inside = write_frames(root / "frames-256" / "train" / "a" / "1").parents[2]
    rows = read_phoenix2014(root, [], check_files=True, frames=inside)
    assert rows[0].video == "frames-256/train/a/1"
    outside = write_frames(tmp_path / "scratch" / "train" / "a" / "1").parents[2]
    bad: list[BadRow] = []
    rows = read_phoenix2014(root, bad, check_files=True, frames=outside)
    assert bad == [] and rows[0].video == (outside / "train" / "a" / "1").as_posix()
    assert Path(rows[0].video).is_absolute()


# --- PHOENIX-2014-T -------------------------------------------------------------------------

def test_phoenix2014t_resolves_both_layouts_and_reports_neither(tmp_path):
    make_phoenix2014t(tmp_path, {
        "train": [p14t_line("11August_2010_Wednesday_tagesschau-2", "Signer08",
                            "DRUCK TIEF KOMMEN", "tiefer luftdruck bestimmt in den nächsten tagen"),
                  p14t_line("11August_2010_Wednesday_tagesschau-3", "Signer07", "ES-BEDEUTET VIEL",
                            "das bedeutet viele wolken")],
        "dev": [p14t_line("12August_2010_Thursday_tagesschau-1", "Signer01", "REGEN", "regen")],
        "test": [p14t_line("13August_2010_Friday_tagesschau-4", "Signer05", "SONNE", "")],
    })
    write_frames(tmp_path / FRAMES / "train" / "11August_2010_Wednesday_tagesschau-2" / "1")  # with 1/
    write_frames(tmp_path / FRAMES / "train" / "11August_2010_Wednesday_tagesschau-3")  # without 1/
    write_frames(tmp_path / FRAMES / "test" / "13August_2010_Friday_tagesschau-4")
    (tmp_path / FRAMES / "dev" / "12August_2010_Thursday_tagesschau-1" / "1").mkdir(parents=True)
    bad: list[BadRow] = []
    rows = read_phoenix2014t(tmp_path, bad)  # resolved on disk even without check_files
    assert rows == [
        ManifestRow("11August_2010_Wednesday_tagesschau-2", "train",
                    f"{FRAMES}/train/11August_2010_Wednesday_tagesschau-2/1",
                    ("DRUCK", "TIEF", "KOMMEN"), signer="Signer08", fps=25.0,
                    dataset="phoenix2014t",
                    translation="tiefer luftdruck bestimmt in den nächsten tagen"),
        ManifestRow("11August_2010_Wednesday_tagesschau-3", "train",
                    f"{FRAMES}/train/11August_2010_Wednesday_tagesschau-3",
                    ("ES-BEDEUTET", "VIEL"), signer="Signer07", fps=25.0, dataset="phoenix2014t",
                    translation="das bedeutet viele wolken"),
        ManifestRow("13August_2010_Friday_tagesschau-4", "test",
                    f"{FRAMES}/test/13August_2010_Friday_tagesschau-4", ("SONNE",),
                    signer="Signer05", fps=25.0, dataset="phoenix2014t"),
    ]
    assert located(bad) == [("PHOENIX-2014-T.dev.corpus.csv", 2)]
    folder = tmp_path / FRAMES / "dev" / "12August_2010_Thursday_tagesschau-1"
    assert bad[0].reason == f"no frame folder with images; tried {folder / '1'} and {folder}"


def test_phoenix2014t_handles_bom_crlf_and_trailing_blanks(tmp_path):
    make_phoenix2014t(tmp_path, {})
    write_table(p14t_file(tmp_path, "train"),
                [P14T_HEADER + "  ", p14t_line("n1", "Signer01", "A  B", "ein satz") + " \t", ""],
                newline="\r\n", bom=True)
    write_frames(tmp_path / FRAMES / "train" / "n1")
    bad: list[BadRow] = []
    rows = read_phoenix2014t(tmp_path, bad)
    assert bad == []
    assert [(r.id, r.glosses, r.translation, r.video) for r in rows] == [
        ("n1", ("A", "B"), "ein satz", f"{FRAMES}/train/n1")]


# --- bad rows -------------------------------------------------------------------------------

def test_phoenix_bad_rows_are_reported_with_file_and_line_and_good_rows_kept(tmp_path):
    make_phoenix2014(tmp_path, {
        "train": [p14_line("good-1"),                          # 2
                  "short|short/1/*.png|Signer01",              # 3 wrong column count
                  "|x/1/*.png|Signer01|HALLO",                 # 4 empty id
                  p14_line("good-1"),                          # 5 duplicate
                  p14_line("../evil"),                         # 6 '..'
                  "a/b|a/b/1/*.png|Signer01|X",                # 7 '/'
                  p14_line("good-2"),                          # 8
                  "c|../../etc/*.png|Signer01|X"],             # 9 folder climbing out
        "dev": ["", p14_line("good-1"), p14_line("good-3")],   # 3 duplicate across splits
    })
    bad: list[BadRow] = []
    rows = read_phoenix2014(tmp_path, bad)
    assert [(r.id, r.split) for r in rows] == [("good-1", "train"), ("good-2", "train"),
                                               ("good-3", "dev")]
    assert located(bad) == [("train.corpus.csv", n) for n in (3, 4, 5, 6, 7, 9)] + [
        ("dev.corpus.csv", 3)]
    reasons = [b.reason for b in bad]
    assert "expected 4" in reasons[0] and "got 3" in reasons[0]
    assert "non-empty" in reasons[1]
    assert "duplicate id 'good-1'" in reasons[2] and f"{p14_file(tmp_path, 'train')}:2" in reasons[2]
    assert "unsafe id '../evil'" in reasons[3] and "unsafe id 'a/b'" in reasons[4]
    assert "unsafe or empty frame folder" in reasons[5]
    assert "duplicate id" in reasons[6] and "train.corpus.csv:2" in reasons[6]


def test_wrong_header_is_a_manifest_error(tmp_path):
    make_phoenix2014(tmp_path, {})
    write_table(p14_file(tmp_path, "dev"), ["name|folder|signer|annotation", p14_line("a")])
    with pytest.raises(ManifestError, match=r"dev\.corpus\.csv:1: expected the header"):
        read_phoenix2014(tmp_path, [])


@pytest.mark.parametrize("reader, file_name", [
    (read_phoenix2014, "train.corpus.csv"),
    (read_phoenix2014t, "PHOENIX-2014-T.train.corpus.csv"),
    (read_csl_daily, "video_map.txt"),
])
def test_missing_annotation_file_is_a_manifest_error(tmp_path, reader, file_name):
    with pytest.raises(ManifestError, match=file_name.replace(".", r"\.")):
        reader(tmp_path, [])


# --- CSL-Daily ------------------------------------------------------------------------------

CSL_MAP = [
    csl_map_line(0, "S000000_P0000_T00", 81, "你 好", "你 好 ！", "你好 ！"),
    csl_map_line(1, "S000001_P0003_T00", 55, "他 谁", "他 是 谁 ？", "他 是 谁 ？"),
    csl_map_line(2, "S000002_P0008_T01", 64, "我 喜欢 吃 苹果", "我 喜 欢 吃 苹 果 。",
                 "我 喜欢 吃 苹果 。"),
]
CSL_SPLIT = ["S000000_P0000_T00|train", "S000001_P0003_T00|dev", "S000002_P0008_T01|test"]


def csl_expected(frames_dir: str) -> list[ManifestRow]:
    return [
        ManifestRow("S000000_P0000_T00", "train", f"{frames_dir}/S000000_P0000_T00", ("你", "好"),
                    signer="P0000", num_frames=81, dataset="csl-daily", translation="你好 ！"),
        ManifestRow("S000001_P0003_T00", "dev", f"{frames_dir}/S000001_P0003_T00", ("他", "谁"),
                    signer="P0003", num_frames=55, dataset="csl-daily", translation="他 是 谁 ？"),
        ManifestRow("S000002_P0008_T01", "test", f"{frames_dir}/S000002_P0008_T01",
                    ("我", "喜欢", "吃", "苹果"), signer="P0008", num_frames=64,
                    dataset="csl-daily", translation="我 喜欢 吃 苹果 。"),
    ]


@pytest.mark.parametrize("frames_dir, label_dir", [
    ("sentence_frames-512x512/frames_512x512", "sentence_label"),
    ("frames_512x512", ""),
    ("sentence_frames-512x512", "sentence_label"),
])
def test_csl_daily_finds_the_frames_root_of_each_release(tmp_path, frames_dir, label_dir):
    make_csl(tmp_path, CSL_MAP, CSL_SPLIT, label_dir)
    for name in ("S000000_P0000_T00", "S000001_P0003_T00", "S000002_P0008_T01"):
        write_frames(tmp_path / frames_dir / name, ext=".jpg")
    (tmp_path / "sentence_label" / "keypoints").mkdir(parents=True)  # a distractor
    bad: list[BadRow] = []
    rows = read_csl_daily(tmp_path, bad, check_files=True)
    assert bad == []
    assert rows == csl_expected(frames_dir)
    assert all(row.fps is None for row in rows)


def test_csl_daily_frames_override(tmp_path):
    root = tmp_path / "CSL-Daily"
    make_csl(root, CSL_MAP, CSL_SPLIT)
    outside = tmp_path / "elsewhere" / "frames"
    for name in ("S000000_P0000_T00", "S000001_P0003_T00", "S000002_P0008_T01"):
        write_frames(outside / name, ext=".jpg")
        write_frames(root / "a" / name, ext=".jpg")  # two candidate roots: only frames= decides
        write_frames(root / "b" / name, ext=".jpg")
    with pytest.raises(ManifestError, match="several CSL-Daily frame roots found"):
        read_csl_daily(root, [])
    bad: list[BadRow] = []
    assert read_csl_daily(root, bad, check_files=True, frames=outside) == csl_expected(
        outside.as_posix())
    assert read_csl_daily(root, bad, frames=root / "b") == csl_expected("b")
    assert bad == []


def test_csl_daily_without_frames_root_lists_what_was_tried(tmp_path):
    make_csl(tmp_path, CSL_MAP, CSL_SPLIT, "sentence_label")
    (tmp_path / "sentence_frames-512x512" / "frames_512x512").mkdir(parents=True)  # empty
    with pytest.raises(ManifestError) as error:
        read_csl_daily(tmp_path, [])
    message = str(error.value)
    assert "no CSL-Daily frames root found" in message and "S000000_P0000_T00/" in message
    assert "sentence_frames-512x512/frames_512x512" in message and "sentence_label" in message
    assert "frames=" in message


def test_csl_daily_bad_rows_are_reported_with_file_and_line(tmp_path):
    make_csl(tmp_path, [
        csl_map_line(0, "S000000_P0000_T00", 30, "你 好", "你 好", "你好"),      # 2 good
        csl_map_line(1, "S000001_P0001_T00", 30, "谢谢", "谢 谢", "谢谢"),        # 3 unknown split
        csl_map_line(2, "S000002_P0002_T00", 20, "再见", "再 见", "再见"),        # 4 no frames
        csl_map_line(3, "S000003_P0003_T00", 20, "好", "好", "好"),               # 5 bad split line
        csl_map_line(4, "S000004_P0004_T00", 0, "好", "好", "好").replace("|0|", "|x|"),  # 6 length
        csl_map_line(5, "..", 20, "好", "好", "好"),                               # 7 unsafe
        "6|S000005_P0005_T00|10|好|好",                                            # 8 5 columns
        csl_map_line(7, "S000000_P0000_T00", 30, "你 好", "你 好", "你好"),       # 9 duplicate
        csl_map_line(8, "S000006_P0006_T00", 12, "是", "是", "是"),               # 10 good
    ], [
        "S000000_P0000_T00|train",       # 2
        "S000001_P0001_T00|validation",  # 3 unknown split
        "S000002_P0002_T00|dev",         # 4
        "S000000_P0000_T00|test",        # 5 duplicate
        "S000003_P0003_T00",             # 6 one column
        "S000004_P0004_T00|test",        # 7
        "S000006_P0006_T00|test",        # 8
    ])
    write_frames(tmp_path / "frames_512x512" / "S000000_P0000_T00", ext=".jpg")
    write_frames(tmp_path / "frames_512x512" / "S000006_P0006_T00", ext=".jpg")
    bad: list[BadRow] = []
    rows = read_csl_daily(tmp_path, bad, check_files=True)
    assert [(r.id, r.split, r.video) for r in rows] == [
        ("S000000_P0000_T00", "train", "frames_512x512/S000000_P0000_T00"),
        ("S000006_P0006_T00", "test", "frames_512x512/S000006_P0006_T00")]
    assert located(bad) == [("split_1.txt", 3), ("split_1.txt", 5), ("split_1.txt", 6)] + [
        ("video_map.txt", n) for n in (3, 5, 6, 7, 8, 9, 4)]
    reasons = {(Path(b.file).name, b.line): b.reason for b in bad}
    assert "unknown split 'validation'" in reasons[("split_1.txt", 3)]
    assert "duplicate id" in reasons[("split_1.txt", 5)]
    assert "expected 2" in reasons[("split_1.txt", 6)]
    assert "no usable split" in reasons[("video_map.txt", 3)]
    assert "no usable split" in reasons[("video_map.txt", 5)]
    assert "length" in reasons[("video_map.txt", 6)]
    assert "unsafe id '..'" in reasons[("video_map.txt", 7)]
    assert "expected 7" in reasons[("video_map.txt", 8)]
    assert "duplicate id 'S000000_P0000_T00'" in reasons[("video_map.txt", 9)]
    assert str(tmp_path / "frames_512x512" / "S000002_P0002_T00") in reasons[("video_map.txt", 4)]


def test_csl_daily_missing_split_file_is_a_manifest_error(tmp_path):
    write_table(tmp_path / "sentence_label" / "video_map.txt", [CSL_MAP_HEADER, *CSL_MAP])
    with pytest.raises(ManifestError, match=r"split_1\.txt: annotation file not found"):
        read_csl_daily(tmp_path, [])


def test_readers_registry():
    assert READERS == {"phoenix2014": read_phoenix2014, "phoenix2014t": read_phoenix2014t,
                       "csl-daily": read_csl_daily}
