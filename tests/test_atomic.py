"""Every file is written whole or not at all, and output paths are checked before any work."""
import errno
import json
import os

import pytest
import torch

from mixprec import atomic
from mixprec.atomic import check_output_dir, check_output_file, save_torch_atomic, write_json_atomic
from mixprec.cli import main
from mixprec.errors import OutputError

from hostile import error_line, user_files


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".mixprec-"))


def test_json_is_always_valid_and_non_finite_floats_read_back(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"metric": float("nan"), "costs": [float("inf"), -float("inf"), 1.5]})
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert data["metric"] == "nan" and [float(v) for v in data["costs"]] == [float("inf"), -float("inf"), 1.5]


def test_full_disk_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "plan.json", {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device.*free some space"):
        write_json_atomic(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True} and leftovers(tmp_path) == []


def test_model_file_is_never_left_truncated(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_torch_atomic({"w": torch.ones(3)}, path)
    real_save = torch.save

    def save_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(10)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OutputError):
        save_torch_atomic({"w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3)) and leftovers(tmp_path) == []


def test_temporary_names_fit_wherever_the_target_name_fits(tmp_path):
    name = "p" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 5) + ".json"
    assert json.loads(write_json_atomic(tmp_path / name, [1]).read_text()) == [1]


def test_output_paths_are_checked(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="existing file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(OutputError, match="longer than the file system allows"):
        check_output_dir(tmp_path / ("d" * 300))
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)
    check_output_dir(tmp_path / "new" / "dir")  # missing directories are fine (made when written)
    assert not (tmp_path / "new").exists()

    real_open = open

    def read_only(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(".mixprec-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(atomic, "open", read_only, raising=False)
    with pytest.raises(OutputError, match="Read-only file system.*directory you can write to"):
        check_output_dir(tmp_path)


@pytest.mark.parametrize("case", ["existing file", "read-only", "name too long"])
def test_quantize_refuses_a_bad_out_before_any_work(tmp_path, monkeypatch, capsys, case):
    user_files(tmp_path)
    marker = tmp_path / "marker"
    monkeypatch.setenv("MIXPREC_TEST_MARKER", str(marker))
    out = tmp_path / "out"
    if case == "existing file":
        out.write_text("not a directory")
    elif case == "name too long":
        out = tmp_path / ("o" * 300)
    else:
        monkeypatch.setattr(atomic, "open", lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.EROFS, "Read-only file system")), raising=False)
    code = main(["quantize", "--model", str(tmp_path / "user.py") + ":model", "--data", str(tmp_path / "data.npz"),
                 "--uniform", "w8a8", "--out", str(out)])
    assert code == 2 and "--out" in error_line(capsys)
    assert not marker.exists()  # refused before the model was even loaded


def test_quantize_on_a_full_disk_is_one_line_and_leaves_no_torn_model(tmp_path, monkeypatch, capsys):
    user_files(tmp_path)
    real_save = torch.save

    def full(obj, f):
        real_save(obj, f)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    code = main(["quantize", "--model", str(tmp_path / "user.py") + ":model", "--data", str(tmp_path / "data.npz"),
                 "--uniform", "w8a8", "--out", str(tmp_path / "q")])
    assert code == 2 and "model.pt" in error_line(capsys)
    assert not (tmp_path / "q" / "model.pt").exists() and leftovers(tmp_path / "q") == []


def test_an_output_file_inside_a_file_or_named_as_a_directory_says_what_to_give(tmp_path):
    from mixprec.atomic import check_output_file
    from mixprec.errors import OutputError
    (tmp_path / "f.onnx").write_text("")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(OutputError, match="is an existing file, so no file can be written inside it"):
        check_output_file(tmp_path / "f.onnx" / "x.onnx")
    with pytest.raises(OutputError, match=r"is a directory; give a file name, e.g. .*dir\.onnx/model\.onnx"):
        check_output_file(tmp_path / "dir.onnx")


def test_a_file_its_writer_makes_by_name_is_shared_like_any_new_file(tmp_path):
    """safetensors' save_file replaces the file it is given by name with one of mode 0600: a server running as
    another user could not read the checkpoint."""
    import stat

    from safetensors.torch import save_file
    path = atomic.write_atomic(tmp_path / "w.safetensors", lambda f: save_file({"w": torch.ones(2)}, f.name))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~atomic._UMASK != 0o600
