"""train.data: finding, validating, downloading and decoding CIFAR-10 (binary release).

Synthetic archives in the official format come from ``cifar_archive``; one full-size valid
archive is built per session and shared. The real-data test runs when ``CIFAR10_DIR`` points
at a copy of the data set.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_archive import (
    ARCHIVE_NAME,
    CLASSES,
    FILE_BYTES,
    FOLDER_NAME,
    IMAGE_BYTES,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    drop,
    file_md5,
    make_archive,
    set_label,
    synthetic_cifar,
    truncate,
    write_batches,
)

import train.data as data_module
import train.download as download_module
from train.data import OFFICIAL_MD5, Cifar10, DataError, DataNotice, load_cifar10, resolve_data_dir

REPO = Path(__file__).resolve().parent.parent
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"  # the official one
REAL_COPY_MD5 = "51c49b9bc1db1ce852a714391c0d3593"  # /work/shared/cifar10 (JPEG re-encoded)
# Read before the autouse fixture below hides it from every other test.
REAL_CIFAR10_DIR = os.environ.get("CIFAR10_DIR", "")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch, tmp_path):
    """Tests see no CIFAR10_DIR and a private cache, unless they set them themselves."""
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def truth():
    """The arrays every synthetic archive below encodes."""
    return synthetic_cifar()


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory, truth) -> Path:
    """A folder holding a valid full-size synthetic cifar-10-binary.tar.gz."""
    directory = tmp_path_factory.mktemp("archive")
    make_archive(directory)
    return directory


@pytest.fixture(scope="session")
def batches_parent(tmp_path_factory, truth) -> Path:
    """A folder holding a valid unpacked cifar-10-batches-bin/."""
    directory = tmp_path_factory.mktemp("unpacked")
    write_batches(directory)
    return directory


@pytest.fixture(scope="session")
def loaded(archive_dir) -> tuple[Cifar10, list[warnings.WarningMessage]]:
    """The valid archive loaded once, with the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(archive_dir, download=False)
    return data, list(caught)


def linked_folder(tmp_path: Path, batches_parent: Path, **replace: bytes | None) -> Path:
    """A cifar-10-batches-bin/ of symlinks to the session's valid files (no 184 MB copy),
    except the files in ``replace`` (name with "." as "_"): new contents, or None to leave
    it out."""
    folder = tmp_path / FOLDER_NAME
    folder.mkdir(parents=True)
    for source in (batches_parent / FOLDER_NAME).iterdir():
        key = source.name.replace(".", "_")
        if key not in replace:
            (folder / source.name).symlink_to(source)
        elif replace[key] is not None:
            (folder / source.name).write_bytes(replace[key])
    return folder


def load_quietly(*args, **kwargs) -> Cifar10:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNotice)
        return load_cifar10(*args, **kwargs)


def assert_matches_truth(data: Cifar10, truth) -> None:
    assert data.train_images.shape == (50_000, 3, 32, 32)
    assert data.test_images.shape == (10_000, 3, 32, 32)
    assert data.train_labels.shape == (50_000,) and data.test_labels.shape == (10_000,)
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert data.train_images.is_contiguous() and data.test_images.is_contiguous()
    assert np.array_equal(data.train_images.numpy(), truth.train_images)
    assert np.array_equal(data.test_images.numpy(), truth.test_images)
    assert np.array_equal(data.train_labels.numpy(), truth.train_labels)
    assert np.array_equal(data.test_labels.numpy(), truth.test_labels)


# --- a valid archive ------------------------------------------------------------------------


def test_valid_archive_loads_exactly_what_was_written(loaded, truth, archive_dir):
    data, caught = loaded
    assert_matches_truth(data, truth)
    assert data.classes == list(CLASSES)
    assert data.source == str(archive_dir / ARCHIVE_NAME)
    assert data.md5 == file_md5(archive_dir / ARCHIVE_NAME)
    assert data.official is False


def test_records_decode_byte_for_byte(loaded, archive_dir):
    """Label byte, then R, G, B planes (32×32 row-major), read from the raw archive bytes."""
    data, _ = loaded
    with tarfile.open(archive_dir / ARCHIVE_NAME) as tar:
        raw = {
            name: tar.extractfile(f"{FOLDER_NAME}/{name}").read()
            for name in ("data_batch_2.bin", "test_batch.bin")
        }
    checks = [
        ("data_batch_2.bin", k, data.train_images, data.train_labels, RECORDS_PER_FILE + k)
        for k in (0, 1, 4321, 9999)
    ]
    checks += [("test_batch.bin", k, data.test_images, data.test_labels, k) for k in (0, 9999)]
    for name, k, images, labels, row in checks:
        record = raw[name][k * RECORD_BYTES : (k + 1) * RECORD_BYTES]
        assert labels[row].item() == record[0]
        for plane in range(3):  # 0 red, 1 green, 2 blue
            expected = np.frombuffer(record, np.uint8, 1024, 1 + 1024 * plane).reshape(32, 32)
            assert np.array_equal(images[row, plane].numpy(), expected), (name, k, plane)
    # The planes really differ, so a loader that swapped them could not pass.
    assert not torch.equal(data.train_images[0, 0], data.train_images[0, 2])


def test_synthetic_set_is_balanced(loaded):
    data, _ = loaded
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1_000] * 10


def test_non_official_archive_gives_one_line_notice(loaded):
    _, caught = loaded
    notices = [w for w in caught if issubclass(w.category, DataNotice)]
    assert len(caught) == len(notices) == 1
    message = str(notices[0].message)
    assert "\n" not in message
    assert "not byte-identical" in message and "not comparable" in message
    assert OFFICIAL_MD5 in message


def test_official_md5_gives_no_notice(archive_dir, monkeypatch, truth):
    monkeypatch.setattr(data_module, "OFFICIAL_MD5", file_md5(archive_dir / ARCHIVE_NAME))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        data = load_cifar10(archive_dir, download=False)
    assert data.official is True


def test_class_names_from_meta_file_or_default(tmp_path, batches_parent):
    names = [f"class {i}" for i in range(10)]
    meta = "\r\n".join(names).encode() + b"\r\n\r\n"
    custom = linked_folder(tmp_path / "a", batches_parent, batches_meta_txt=meta)
    assert load_cifar10(custom, download=False).classes == names
    missing = linked_folder(tmp_path / "b", batches_parent, batches_meta_txt=None)
    assert load_cifar10(missing, download=False).classes == list(CLASSES)
    wrong_count = linked_folder(tmp_path / "c", batches_parent, batches_meta_txt=b"a\nb\n")
    assert load_cifar10(wrong_count, download=False).classes == list(CLASSES)


# --- layouts and locations ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["archive file", "batches folder", "parent of batches folder"])
def test_accepted_layouts(layout, archive_dir, batches_parent, truth):
    path = {
        "archive file": archive_dir / ARCHIVE_NAME,
        "batches folder": batches_parent / FOLDER_NAME,
        "parent of batches folder": batches_parent,
    }[layout]
    data = load_quietly(path, download=False)
    assert_matches_truth(data, truth)
    if layout == "archive file":
        assert data.source == str(path) and data.official is False
    else:
        assert data.source == str(batches_parent / FOLDER_NAME)
        assert data.md5 is None and data.official is None


def test_unpacked_folder_gives_no_notice(batches_parent):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(batches_parent, download=False)


def test_archive_preferred_over_unpacked_folder(tmp_path, archive_dir, batches_parent):
    (tmp_path / ARCHIVE_NAME).symlink_to(archive_dir / ARCHIVE_NAME)
    (tmp_path / FOLDER_NAME).symlink_to(batches_parent / FOLDER_NAME)
    assert load_quietly(tmp_path, download=False).source == str(tmp_path / ARCHIVE_NAME)


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "resnet9-speedrun" / "cifar10"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "resnet9-speedrun" / "cifar10"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # invalid per the XDG spec
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "resnet9-speedrun" / "cifar10"
    monkeypatch.setenv("CIFAR10_DIR", "")  # empty counts as unset
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "resnet9-speedrun" / "cifar10"
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"


def test_env_var_is_used(monkeypatch, batches_parent, truth):
    monkeypatch.setenv("CIFAR10_DIR", str(batches_parent))
    data = load_cifar10(download=False)
    assert data.source == str(batches_parent / FOLDER_NAME)
    assert_matches_truth(data, truth)


def test_explicit_dir_beats_env_var(monkeypatch, tmp_path, batches_parent):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "nothing-here"))
    data = load_cifar10(batches_parent, download=False)
    assert data.source == str(batches_parent / FOLDER_NAME)


def test_missing_without_download_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError) as error:
        load_cifar10(download=False)
    message = str(error.value)
    assert str(tmp_path / "empty" / ARCHIVE_NAME) in message
    assert "--data-dir" in message and "CIFAR10_DIR" in message and "--no-download" in message
    assert not (tmp_path / "empty").exists()  # nothing created


# --- malformed data -------------------------------------------------------------------------


def test_truncated_batch_file_in_archive(tmp_path):
    path = make_archive(tmp_path, corrupt=truncate("data_batch_3.bin", 1234))
    with pytest.raises(
        DataError,
        match=r"data_batch_3\.bin .* is 1,234 bytes; a CIFAR-10 "
        r"batch file is 30,730,000 bytes",
    ) as error:
        load_quietly(path, download=False)
    # The user's own file (--data-dir): told what to point at, never to delete it.
    assert f"point --data-dir at a complete copy of {ARCHIVE_NAME}" in str(error.value)
    assert "delete" not in str(error.value)


def test_oversized_batch_file_in_folder(tmp_path, batches_parent):
    grown = (batches_parent / FOLDER_NAME / "test_batch.bin").read_bytes() + bytes(RECORD_BYTES)
    folder = linked_folder(tmp_path, batches_parent, test_batch_bin=grown)
    with pytest.raises(DataError, match=r"test_batch\.bin .* is 30,733,073 bytes") as error:
        load_cifar10(folder, download=False)
    # The folder is the user's: told what to point at, not to delete it.
    assert str(error.value).endswith(
        f"point --data-dir at a freshly unpacked {FOLDER_NAME}/ or at {ARCHIVE_NAME} ({CIFAR_URL})"
    )
    assert "delete" not in str(error.value)


def test_missing_batch_file(tmp_path, batches_parent):
    archive = make_archive(tmp_path / "a", corrupt=drop("data_batch_4.bin"))
    with pytest.raises(DataError, match=r"has no data_batch_4\.bin"):
        load_quietly(archive, download=False)
    folder = linked_folder(tmp_path / "f", batches_parent, data_batch_4_bin=None)
    with pytest.raises(DataError, match=r"data_batch_4\.bin is missing from"):
        load_cifar10(folder, download=False)


def test_label_out_of_range(tmp_path, batches_parent):
    # Archive and folder share the decoder, so the folder (cheap to build) covers both.
    content = bytearray((batches_parent / FOLDER_NAME / "test_batch.bin").read_bytes())
    content[5 * RECORD_BYTES] = 10
    content[7 * RECORD_BYTES] = 255
    folder = linked_folder(tmp_path, batches_parent, test_batch_bin=bytes(content))
    with pytest.raises(
        DataError, match=r"test_batch\.bin .* has label 10 in record 5 \(2 of 10,000 "
    ):
        load_cifar10(folder, download=False)


def test_label_helper_writes_the_byte(tmp_path):
    """cifar_archive.set_label corrupts the label byte (used by other test files)."""
    files = synthetic_cifar().files()
    changed = set_label("test_batch.bin", 5, 10)(files)["test_batch.bin"]
    assert changed[5 * RECORD_BYTES] == 10 and len(changed) == FILE_BYTES


def test_truncated_archive(tmp_path, archive_dir):
    content = (archive_dir / ARCHIVE_NAME).read_bytes()
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"is truncated .* point --data-dir at a complete"):
        load_cifar10(tmp_path, download=False)


def test_corrupt_archive(tmp_path, archive_dir):
    content = bytearray((archive_dir / ARCHIVE_NAME).read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(64)  # garbage inside the deflate stream
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"is corrupt .* point --data-dir at a complete"):
        load_cifar10(path, download=False)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", r"is empty \(0 bytes\), not a CIFAR-10 archive"),
        (
            b"<!DOCTYPE html><html>404 Not Found</html>",
            r"is not a CIFAR-10 archive \(not a gzip file; it looks like a web page",
        ),
        (b"PK\x03\x04 a zip file", r"is not a CIFAR-10 archive \(not a gzip file\): "),
    ],
)
def test_not_a_gzip_file(tmp_path, content, expected):
    (tmp_path / ARCHIVE_NAME).write_bytes(content)
    with pytest.raises(DataError, match=expected):
        load_cifar10(tmp_path, download=False)


def test_gzip_of_something_else(tmp_path):
    (tmp_path / ARCHIVE_NAME).write_bytes(gzip.compress(b"not a tar file" * 100))
    with pytest.raises(DataError, match=r"not a readable tar archive|has no data_batch_1"):
        load_cifar10(tmp_path, download=False)


def test_python_version_archive_is_refused_with_a_pointer(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x80\x04N."))  # a pickle that is never loaded
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"Python \(pickle\) version .* cifar-10-binary"):
        load_quietly(path, download=False)


# --- whose file it is: the advice at the end of a refusal ----------------------------------

NOT_GZIP = b"PK\x03\x04 a zip file, not gzip" * 10


def test_file_named_by_data_dir_is_not_a_cifar_archive_and_is_not_to_be_deleted(tmp_path):
    """--data-dir naming some other file: said to be no CIFAR-10 archive; the user is told
    what to point at, never to delete or download over their own file."""
    path = tmp_path / "photos.zip"
    path.write_bytes(NOT_GZIP)
    with pytest.raises(DataError) as error:
        load_cifar10(path, url="file:///nonexistent/never-fetched.tar.gz", log=None)
    message = str(error.value)
    assert message.startswith(f"{path} is not a CIFAR-10 archive (not a gzip file): ")
    assert f"point --data-dir at a complete copy of {ARCHIVE_NAME}" in message
    assert "delete" not in message and "download again" not in message
    assert "\n" not in message and path.read_bytes() == NOT_GZIP


def test_file_named_by_the_environment_variable_gets_the_same_care(tmp_path, monkeypatch):
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(NOT_GZIP)
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path))
    with pytest.raises(DataError, match="is not a CIFAR-10 archive") as error:
        load_cifar10(download=False)
    assert "point the CIFAR10_DIR environment variable at a complete copy" in str(error.value)
    assert "delete" not in str(error.value)


def test_bad_archive_in_the_trainers_own_cache_may_be_downloaded_again(tmp_path):
    """The cache is the trainer's: there, deleting and downloading again is the fix."""
    cache = tmp_path / "xdg-cache" / "resnet9-speedrun" / "cifar10"  # see _no_data_env
    cache.mkdir(parents=True)
    (cache / ARCHIVE_NAME).write_bytes(NOT_GZIP)
    with pytest.raises(
        DataError,
        match=r"is not a CIFAR-10 archive \(not a gzip file\): "
        r"delete it and download again$",
    ):
        load_cifar10(download=False)


# --- symbolic link loops --------------------------------------------------------------------


def loop(link: Path) -> Path:
    """Make ``link`` a symbolic link to itself (the shortest loop); returns it."""
    link.symlink_to(link.name)
    return link


@pytest.mark.parametrize(
    "layout", ["data-dir", "archive", "batches-folder", "parent", "batch-file"]
)
def test_symbolic_link_loop_is_named_in_one_line(tmp_path, layout):
    """A loop was taken for a missing data set (Path.exists says False), so the trainer
    offered to download over it; now the loop itself is named."""
    root = tmp_path / "data"
    if layout == "data-dir":
        root = link = loop(tmp_path / "data")
    elif layout == "archive":
        root.mkdir()
        link = loop(root / ARCHIVE_NAME)
    elif layout == "batches-folder":
        root.mkdir()
        link = loop(root / FOLDER_NAME)
    elif layout == "parent":
        link = loop(tmp_path / "link")
        root = link / "inside"
    else:  # a batch file in an otherwise ordinary unpacked folder
        folder = root / FOLDER_NAME
        folder.mkdir(parents=True)
        link = loop(folder / "data_batch_1.bin")
    with pytest.raises(DataError) as error:
        # Downloading allowed: a loop must be reported, not downloaded over.
        load_cifar10(root, url="file:///nonexistent/never-fetched.tar.gz", log=None)
    message = str(error.value)
    assert message.startswith(f"{link} is a symbolic link loop")
    assert "fix the link" in message and "--data-dir" in message and "\n" not in message
    assert link.is_symlink() and os.readlink(link) == link.name  # left as it was


# --- downloading ----------------------------------------------------------------------------


def test_download_lands_in_the_cache(archive_dir, truth, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = archive_dir / ARCHIVE_NAME
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(url=source.as_uri(), expected_md5=file_md5(source), log=lines.append)
    target = tmp_path / "cache" / "resnet9-speedrun" / "cifar10" / ARCHIVE_NAME
    assert data.source == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == [ARCHIVE_NAME]  # no temp file
    assert file_md5(target) == file_md5(source)
    assert_matches_truth(data, truth)
    assert [w.category for w in caught] == [DataNotice]  # still not the official release
    assert any("downloading" in line for line in lines)


def test_download_to_an_archive_path(archive_dir, tmp_path):
    source = archive_dir / ARCHIVE_NAME
    target = tmp_path / "new" / "my-copy.tar.gz"
    data_module.download_archive(
        target, url=source.as_uri(), expected_md5=file_md5(source), log=None
    )
    assert file_md5(target) == file_md5(source)
    assert sorted(p.name for p in target.parent.iterdir()) == ["my-copy.tar.gz"]


def test_download_with_wrong_md5_leaves_nothing(archive_dir, tmp_path):
    target_dir = tmp_path / "dl"
    with pytest.raises(DataError, match=r"has md5 [0-9a-f]{32}, not the expected 0{32}"):
        load_cifar10(
            target_dir, url=(archive_dir / ARCHIVE_NAME).as_uri(), expected_md5="0" * 32, log=None
        )
    assert not target_dir.exists()  # not the archive, not a temp file, not the folder


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/cifar-10-binary.tar.gz",  # nothing listens: connection refused
        "file:///nonexistent/cifar-10-binary.tar.gz",
    ],
)
def test_unreachable_url_says_where_to_put_the_archive(url, tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a configured proxy must not answer for 127.0.0.1
    target_dir = tmp_path / "dl"
    with pytest.raises(DataError) as error:
        load_cifar10(target_dir, url=url, timeout=5, log=None)
    message = str(error.value)
    assert str(target_dir / ARCHIVE_NAME) in message
    assert "--data-dir" in message and "CIFAR10_DIR" in message
    assert "\n" not in message
    assert not target_dir.exists()  # the folder made for the download is gone too


def test_download_into_an_unwritable_place_fails_clearly(tmp_path, archive_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DataError, match=r"cannot download it into .* put it at"):
        load_cifar10(blocker / "sub", url=(archive_dir / ARCHIVE_NAME).as_uri(), log=None)


def test_failed_download_removes_the_folders_it_created_and_only_those(tmp_path, archive_dir):
    mine = tmp_path / "mine"
    mine.mkdir()  # the user's, empty: it must stay
    target = mine / "new" / "deeper"
    with pytest.raises(DataError, match="has md5"):
        load_cifar10(
            target, url=(archive_dir / ARCHIVE_NAME).as_uri(), expected_md5="0" * 32, log=None
        )
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_download_interrupted_by_ctrl_c_leaves_no_folder(tmp_path, monkeypatch):
    def interrupted(url, timeout):
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module.urllib.request, "urlopen", interrupted)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(log=None)
    assert not (tmp_path / "cache").exists()  # the whole chain it made, XDG folder too


def test_download_keeps_a_folder_someone_else_filled_meanwhile(tmp_path, monkeypatch):
    """Only empty folders are removed: a file put there during the download stays."""
    target = tmp_path / "a" / "b"

    def someone_writes_there(url, timeout):
        (tmp_path / "a" / "notes.txt").write_text("mine")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", someone_writes_there)
    with pytest.raises(DataError, match="no network"):
        load_cifar10(target, log=None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["notes.txt"]


# --- the command line -----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", "--device", "cpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CIFAR10_DIR": ""},
    )


@pytest.mark.parametrize("case", ["loop", "not-gzip"])
def test_cli_reports_a_bad_data_dir_in_one_line_with_exit_3(tmp_path, case):
    path = loop(tmp_path / "data") if case == "loop" else tmp_path / "notes.tar.gz"
    if case == "not-gzip":
        path.write_bytes(NOT_GZIP)
    result = run_cli("--data-dir", str(path), "--no-download")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = (
        "is a symbolic link loop"
        if case == "loop"
        else "is not a CIFAR-10 archive (not a gzip file)"
    )
    assert lines[0].startswith(f"error: {path} {expected}")
    assert "delete" not in lines[0]


# --- Cifar10 methods ------------------------------------------------------------------------


def small_set(train: int = 20, test: int = 10) -> Cifar10:
    return Cifar10(
        train_images=torch.arange(train * IMAGE_BYTES, dtype=torch.int64)
        .to(torch.uint8)
        .reshape(train, 3, 32, 32),
        train_labels=torch.arange(train) % 10,
        test_images=torch.zeros(test, 3, 32, 32, dtype=torch.uint8),
        test_labels=torch.arange(test) % 10,
        classes=list(CLASSES),
        source="mem",
    )


def test_subset_takes_the_first_n():
    data = small_set()
    sub = data.subset(5, None)
    assert sub.train_images.shape == (5, 3, 32, 32) and sub.test_images.shape[0] == 10
    assert torch.equal(sub.train_images, data.train_images[:5])
    assert torch.equal(sub.train_labels, data.train_labels[:5])
    assert sub.train_images.is_contiguous()
    assert data.subset().train_images.shape[0] == 20
    assert data.subset(20, 10).test_labels.shape == (10,)
    assert data.subset(test_n=3).test_labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "train_n, test_n, pattern",
    [
        (0, None, r"--train-subset 0 is out of range: the train set has 20 images; use 1 to 20"),
        (-1, None, r"--train-subset -1 is out of range"),
        (21, None, r"--train-subset 21 is out of range"),
        (None, 11, r"--test-subset 11 is out of range: the test set has 10 images"),
        (True, None, r"must be a whole number"),
        (2.5, None, r"must be a whole number"),
    ],
)
def test_subset_validation(train_n, test_n, pattern):
    with pytest.raises(DataError, match=pattern):
        small_set().subset(train_n, test_n)


def test_to_device_returns_a_copy_on_that_device():
    data = small_set()
    moved = data.to("cpu")
    assert moved is not data and moved.train_images.device.type == "cpu"
    assert torch.equal(moved.train_images, data.train_images)
    assert moved.classes == data.classes and moved.source == data.source
    if torch.cuda.is_available():
        on_gpu = data.to("cuda")
        assert on_gpu.train_images.is_cuda and on_gpu.test_labels.is_cuda
        assert torch.equal(on_gpu.train_images.cpu(), data.train_images)


def test_data_error_is_a_runtime_error():
    assert issubclass(DataError, RuntimeError) and issubclass(DataNotice, UserWarning)


# --- the real data set ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_copy_from_env(monkeypatch):
    real = REAL_CIFAR10_DIR
    if not real:
        pytest.skip(
            "CIFAR10_DIR is not set: point it at a real CIFAR-10 copy "
            "(e.g. /work/shared/cifar10) to run this test"
        )
    monkeypatch.setenv("CIFAR10_DIR", real)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(download=False)
    assert data.train_images.shape == (50_000, 3, 32, 32)
    assert data.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1_000] * 10
    assert data.classes == list(CLASSES)
    mean = data.train_images[:10_000].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01)
    if data.md5 is not None:  # an archive (an unpacked folder has no md5)
        assert data.official == (data.md5 == OFFICIAL_MD5)
        notices = [w for w in caught if issubclass(w.category, DataNotice)]
        assert len(notices) == (0 if data.official else 1)
        if data.md5 == REAL_COPY_MD5:
            assert "not comparable" in str(notices[0].message)
