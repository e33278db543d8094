"""Many images at once: folders and .zip archives, with every kind of bad entry reported, not fatal."""

import io
import zipfile

import pytest
from PIL import Image

from diffood.cli import main
from diffood.inputs import collect, expand, read_archive
from tests.conftest import needs_data


def _png(bg=255):
    img = Image.new("L", (40, 40), bg)
    img.paste(255 - bg, (10, 5, 30, 35))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes], links=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_an_archive_yields_its_images_and_names_each_refusal():
    data = _zip({"a/shirt.png": _png(), "b.png": _png(0), "../../escape.png": _png(), "/abs.png": _png(),
                 "inner.zip": _zip({"x.png": _png()}), "huge.png": bytes(2_000_000)}, links=["link.png"])
    entries = {e.name: e for e in read_archive("batch.zip", data, max_bytes=1_000_000)}
    assert entries["batch.zip/a/shirt.png"].data == _png() and entries["batch.zip/b.png"].error is None
    assert "leaves the archive" in entries["batch.zip/../../escape.png"].error
    assert "leaves the archive" in entries["batch.zip//abs.png"].error
    assert "archives inside archives" in entries["batch.zip/inner.zip"].error
    assert "limit" in entries["batch.zip/huge.png"].error
    assert "symbolic link" in entries["batch.zip/link.png"].error


def test_archive_limits_refuse_bombs_before_reading():
    bomb = _zip({f"{i}.png": bytes(300_000) for i in range(3)})
    assert "limit is 2" in read_archive("a.zip", bomb, max_entries=2)[0].error
    assert "unpacks to" in read_archive("a.zip", bomb, max_total=500_000)[0].error
    assert all("compression ratio" in e.error for e in read_archive("a.zip", bomb, max_ratio=50))
    assert "not a readable zip" in read_archive("a.zip", b"PK\x03\x04 truncated")[0].error


def test_a_folder_is_read_recursively_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(_png())
    (tmp_path / "sub" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("skipped: not an image suffix")
    (tmp_path / "set.zip").write_bytes(_zip({"c.png": _png()}))
    names = [e.name for e in collect([str(tmp_path)])]
    assert names == [str(tmp_path / "b.png"), f"{tmp_path / 'set.zip'}/c.png", str(tmp_path / "sub" / "a.jpg")]
    assert [e.name for e in expand("x.png", b"")] == ["x.png"]


@needs_data
def test_cli_scores_files_folders_and_archives_into_a_table(tiny_checkpoint, tmp_path, capsys):
    import pandas as pd

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "shirt.png").write_bytes(_png())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    archive = tmp_path / "batch.zip"
    archive.write_bytes(_zip({"dark.png": _png(0), "readme.txt": b"hello", "huge.png": bytes(60 * 2**20)}))
    out = tmp_path / "scores.csv"
    code = main(["score", "--checkpoint", str(tiny_checkpoint), "--steps", "2", str(folder), str(archive), "--out", str(out)])
    assert code == 1  # some entries failed
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["file", "score", "percentile", "verdict", "nearest_id_distance", "threshold", "tpr", "error"]
    by_file = table.set_index("file")
    for name in (str(folder / "shirt.png"), f"{archive}/dark.png"):  # each verdict is its score against the threshold
        row = by_file.loc[name]
        score, threshold = float(row["score"]), float(row["threshold"])
        assert row["verdict"] == ("likely OOD" if score > threshold else "looks in-distribution")
        assert 0 <= float(row["percentile"]) <= 100 and float(row["tpr"]) == 0.95
    assert by_file.loc[f"{archive}/dark.png", "error"] == ""
    for bad in (str(folder / "broken.png"), f"{archive}/readme.txt", f"{archive}/huge.png"):
        assert by_file.loc[bad, "verdict"] == "error" and by_file.loc[bad, "error"], bad
    printed = capsys.readouterr().out
    assert "readme.txt: error: not a readable image" in printed and f"wrote {out}" in printed


@pytest.mark.parametrize("chunk", [1, 3])
@needs_data
def test_batches_score_as_single_images_do(tiny_checkpoint, chunk):
    import numpy as np

    from diffood.evaluate import EvalConfig, evaluate
    from diffood.inputs import Entry
    from diffood.model import load_checkpoint
    from diffood.verdict import Reference, judge_entries

    ckpt = load_checkpoint(tiny_checkpoint)
    ref = Reference.from_result(evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), ood=(), ts=(400,),
                                                    score="reconstruction(ts=400, draws=2)", n_val=10, steps=2), ckpt))
    entries = [Entry("a", _png()), Entry("b", b"nope"), Entry("c", _png(0)), Entry("d", error="refused")]
    table = judge_entries(entries, ckpt, ref, chunk=chunk)
    one = judge_entries(entries[2:3], ckpt, ref)
    assert list(table["error"] == "") == [True, False, True, False]
    assert np.isclose(table.loc[2, "score"], one.loc[0, "score"], atol=1e-4)


def _zeros_zip(path, mib: int) -> None:
    """A zip holding one entry of `mib` MiB of zeros: about a thousandth of that on disk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros.png", "w", force_zip64=True) as f:
        chunk = bytes(2**20)
        for _ in range(mib):
            f.write(chunk)


def test_a_bomb_is_refused_by_its_header_everywhere_without_decompressing(tmp_path, monkeypatch):
    from diffood.datasets import DataSpec, DataSpecError, load_split

    bomb = tmp_path / "bomb.zip"
    _zeros_zip(bomb, 200)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    with pytest.raises(DataSpecError, match="over the 50 MiB limit per image"):  # as training data
        load_split(DataSpec(str(bomb)), "train", tmp_path, False)
    [entry] = collect([str(bomb)])  # as an argument of `score`
    assert "over the 50 MiB limit" in entry.error and entry.data is None
    [entry] = expand("bomb.zip", bomb.read_bytes())  # as an upload
    assert "over the 50 MiB limit" in entry.error
    assert opened == []  # no entry was ever opened


def test_hidden_entries_and_macos_folders_are_skipped_in_archives_and_folders(tmp_path):
    data = _zip({"a.png": _png(), "__MACOSX/._a.png": b"junk", ".hidden.png": _png(), "d/.DS_Store": b"x", "x.gif": _png()})
    assert [e.name for e in read_archive("s.zip", data)] == ["s.zip/a.png", "s.zip/x.gif"]
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._a.png").write_bytes(b"junk")
    (tmp_path / ".b.png").write_bytes(_png())
    (tmp_path / "a.gif").write_bytes(_png())
    assert [e.name for e in collect([str(tmp_path)])] == [str(tmp_path / "a.gif")]


def test_a_folder_scan_is_bounded_and_says_why_it_stopped(tmp_path):
    from diffood.inputs import InputError, ScanLimits, scan_folder

    for i in range(30):
        (tmp_path / f"{i}.png").write_bytes(b"")
    deep = tmp_path
    for i in range(4):
        deep = deep / f"d{i}"
        deep.mkdir()
    (deep / "deep.png").write_bytes(b"")
    with pytest.raises(InputError, match="stopped scanning after 10 entries"):
        scan_folder(tmp_path, ScanLimits(entries=10))
    scan = scan_folder(tmp_path, ScanLimits(depth=2))
    assert len(scan.files) == 30 and scan.too_deep == 1 and "deeper than" in " ".join(scan.notes())
    assert len(scan_folder(tmp_path).files) == 31
    [entry] = collect([str(tmp_path)], scan=ScanLimits(entries=10))
    assert "stopped scanning" in entry.error


@pytest.mark.slow
def test_training_on_a_one_gigabyte_bomb_is_one_line_in_little_memory(tmp_path):
    """`diffood train --data` a zip with 1 GiB of zeros in one entry (1 MB on disk)."""
    import subprocess
    import sys

    bomb = tmp_path / "x.zip"
    _zeros_zip(bomb, 1024)
    peak = tmp_path / "peak"  # the child's own peak RSS (VmHWM: getrusage would count the forking parent's), at exit
    code = ("import atexit, re, sys; from diffood.cli import main; atexit.register(lambda: open(sys.argv[1], 'w').write("
            "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))); sys.exit(main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(peak), "train", "--data", str(bomb), "--run-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [proc.stderr.strip()]
    assert int(peak.read_text()) < 1.5 * 2**20  # KiB: peak RSS under 1.5 GiB
