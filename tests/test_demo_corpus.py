"""Checks on the committed demo corpora (data/demo/) and on their rebuild from the packages.

The fast tests read only the committed files; the slow one downloads the Debian packages with
`apt-get download`, rebuilds into tmp_path and requires byte-identical output.
"""
import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.maintainers import build_demo_corpus

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
DIRECTIONS = {"en-de": "de", "en-vi": "vi"}
SPLITS = ("train", "dev", "test")
MIN_PAIRS = {("en-de", "train"): 30000, ("en-vi", "train"): 12000}   # dev/test: 1000 each
VIETNAMESE_MARKS = set("ăâđêôơưĂÂĐÊÔƠƯàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ")


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    assert text.endswith("\n"), f"{path}: last line has no newline"
    return text[:-1].split("\n")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DEMO / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpora() -> dict:
    """{(direction, split): (english lines, target lines)}"""
    out = {}
    for direction, tgt in DIRECTIONS.items():
        for split in SPLITS:
            out[direction, split] = (read_lines(DEMO / direction / f"{split}.en.gz"),
                                     read_lines(DEMO / direction / f"{split}.{tgt}.gz"))
    return out


def test_files_match_manifest_sha256(manifest):
    expected = {f"{d}/{s}.{lang}.gz" for d, t in DIRECTIONS.items() for s in SPLITS
                for lang in ("en", t)}
    listed = {name for info in manifest["directions"].values() for name in info["files"]}
    assert listed == expected
    for info in manifest["directions"].values():
        for name, meta in info["files"].items():
            data = (DEMO / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], name
            assert data[4:8] == b"\0\0\0\0", f"{name}: gzip mtime must be 0 (deterministic)"


def test_aligned_clean_and_counted(corpora, manifest):
    for (direction, split), (en, tgt) in corpora.items():
        where = f"{direction}/{split}"
        assert len(en) == len(tgt), f"{where}: {len(en)} English vs {len(tgt)} target lines"
        assert len(en) == manifest["directions"][direction]["pairs"][split], where
        assert len(en) >= MIN_PAIRS.get((direction, split), 1000), where
        for line in en + tgt:
            assert line and line == " ".join(line.split()), f"{where}: bad line {line!r}"


def test_readme_states_the_manifest_counts(manifest):
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    for direction, info in manifest["directions"].items():
        c = info["pairs"]
        row = f"| {direction} | {c['train']} | {c['dev']} | {c['test']} | {sum(c.values())} |"
        assert row in readme, f"README.md lacks the count row {row!r}; rerun the build tool"
    assert "MPL-2.0" in (DEMO / "LICENSE").read_text(encoding="utf-8")


def test_no_pair_or_source_overlap_between_splits(corpora):
    for direction in DIRECTIONS:
        seen_pairs, seen_en = set(), set()
        for split in SPLITS:
            en, tgt = corpora[direction, split]
            pairs = set(zip(en, tgt))
            assert len(pairs) == len(en), f"{direction}/{split}: duplicate pairs"
            assert not pairs & seen_pairs, f"{direction}/{split}: pair also in an earlier split"
            if split != "train":
                assert not set(en) & seen_en, f"{direction}/{split}: English in earlier split"
            seen_pairs |= pairs
            seen_en |= set(en)


def test_targets_are_translations(corpora):
    for (direction, split), (en, tgt) in corpora.items():
        assert all(e != t for e, t in zip(en, tgt)), f"{direction}/{split}: untranslated pair"
    vi = [line for split in SPLITS for line in corpora["en-vi", split][1]]
    with_marks = sum(any(ch in VIETNAMESE_MARKS for ch in line) for line in vi)
    assert with_marks / len(vi) > 0.98, f"only {with_marks}/{len(vi)} Vietnamese lines have marks"
    de = [line for split in SPLITS for line in corpora["en-de", split][1]]
    umlauts = sum(any(ch in "äöüÄÖÜß" for ch in line) for line in de)
    assert umlauts / len(de) > 0.3, f"only {umlauts}/{len(de)} German lines have ä/ö/ü/ß"


def test_extraction_keeps_words_apart_and_default_variants():
    page = ('<div><p id="par_id1" class="paragraph">Choose <span class="switchinline">'
            '<span hidden="true" id="MACa" class="MAC">LibreOffice - Preferences</span>'
            '<span hidden="true" id="defaulta">Tools - Options</span></span>'
            '<span class="emph"> - Load/Save</span>.</p><p id="par_id2">a<br>b&amp;c'
            '<img src="x.svg" alt="Icon"></p><h2 id="hd_id3">Title</h2>'
            '<span class="switch"><span hidden="true" id="CALCb" class="CALC">'
            '<p id="par_id4">Calc only</p></span></span><p id="par_id1">again</p></div>')
    assert build_demo_corpus.extract_segments(page) == [
        ("par_id1#0", "Choose Tools - Options - Load/Save."), ("par_id2#0", "a b&c"),
        ("hd_id3#0", "Title"), ("par_id4#0", "Calc only"), ("par_id1#1", "again")]


def test_english_detector_for_vietnamese_side():
    vocab = {"click", "the", "button", "reset", "filter"}
    assert build_demo_corpus.looks_english("Click the Reset button", vocab)
    assert not build_demo_corpus.looks_english("Nhấn nút Đặt lại", vocab)
    assert not build_demo_corpus.looks_english("Song song", vocab)    # no marks, not English


@pytest.mark.slow
def test_rebuild_from_packages_is_byte_identical(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not available")
    packages = ["libreoffice-help-en-us", "libreoffice-help-de", "libreoffice-help-vi"]
    manifest = json.loads((DEMO / "manifest.json").read_text(encoding="utf-8"))
    pinned = [f"{name}={version}" for name, version in manifest["packages"].items()]
    assert sorted(manifest["packages"]) == sorted(packages)
    download = subprocess.run(["apt-get", "download", *pinned], cwd=tmp_path,
                              capture_output=True, text=True)
    if download.returncode != 0:
        pytest.skip(f"apt-get download failed: {download.stderr.strip()[:300]}")
    for deb in sorted(tmp_path.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")], check=True)
    out = tmp_path / "out"
    assert build_demo_corpus.main(["--unpacked", str(tmp_path / "root"), "--out", str(out)]) == 0
    for name in ["manifest.json", "README.md"] + [
            f"{d}/{s}.{lang}.gz" for d, t in DIRECTIONS.items() for s in SPLITS
            for lang in ("en", t)]:
        assert (out / name).read_bytes() == (DEMO / name).read_bytes(), f"{name} differs"
