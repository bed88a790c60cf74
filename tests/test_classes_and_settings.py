"""Classes matched by name across runs, typed settings, and the exit-code contract.

- `--init-from` maps head rows by class name (new classes initialised, removed classes refused), every teacher
  and every ensemble member is checked, and a member that lists the same classes in another order gives the
  same ensemble as the original.
- Settings from the command line and YAML files are checked against the TrainConfig field types.
- `helpers.commands.cli.main`: 0 done, 2 the user's input or environment, 130 interrupted, 1 a bug.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import pytest
import torch

from helpers.base.config import TrainConfig, make_config
from helpers.base.errors import UserError
from helpers.commands import cli
from helpers.commands.cli import main
from helpers.training import checkpoint
from helpers.training.distill import Teacher
from helpers.training.models import create_model, grow_head
from helpers.use.inference import evaluate
from helpers.use.runs import load_teachers

from .conftest import TINY

LITE = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "offline", "--image-size", "64", "--epochs", "1",
        "--batch-size", "16", "--num-workers", "0", "--checkpoint-every", "0"]
CLASSES = (TINY / "meta" / "classes.txt").read_text().split()


def _one_paragraph(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _reordered(run: Path, dst: Path, order: list[int]) -> Path:
    """A copy of a run's best checkpoint with its classes (head rows and names) in another order or subset."""
    state = checkpoint.load(run)
    head = {k: v for k, v in state["model"].items() if k.startswith("classifier")}
    state["model"].update({k: v[order] for k, v in head.items()})
    state["class_names"] = [state["class_names"][i] for i in order]
    checkpoint.save_atomic(state, dst)
    return dst


def _without_class(root: Path, name: str) -> Path:
    meta = root / "meta"
    meta.joinpath("classes.txt").write_text("\n".join(c for c in CLASSES if c != name) + "\n")
    for split in ("train", "test"):
        lines = meta.joinpath(f"{split}.txt").read_text().split()
        meta.joinpath(f"{split}.txt").write_text("\n".join(x for x in lines if not x.startswith(name + "/")) + "\n")
    return root


# ----------------------------------------------------------------------------------------------------------------
# Classes by name


def test_grow_head_maps_rows_by_class_name_and_refuses_removed_classes(caplog):
    old = create_model("tf_efficientnet_lite0", 4, pretrained="none")
    new = create_model("tf_efficientnet_lite0", 5, pretrained="none")
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    caplog.set_level("INFO")
    mapped = grow_head(new, old.state_dict(), ["a", "b", "c", "d"], ["d", "new", "a", "c", "b"], "run X")
    for key in ("classifier.weight", "classifier.bias"):
        src = old.state_dict()[key]
        torch.testing.assert_close(mapped[key][[0, 2, 3, 4]], src[[3, 0, 2, 1]])  # d, a, c, b by name
        torch.testing.assert_close(mapped[key][1], fresh[key][1])  # the new class keeps its initialisation
    assert "4 kept (4 at another position), 1 new (new)" in caplog.text
    with pytest.raises(UserError, match=r"run X was trained on 4 classes, 1 of which this dataset lacks \(b\)"):
        grow_head(create_model("tf_efficientnet_lite0", 3, pretrained="none"), old.state_dict(), ["a", "b", "c", "d"],
                  ["a", "c", "d"], "run X")


def test_init_from_a_run_with_a_class_the_data_lacks_is_refused(trained_run, tiny_copy, tmp_path, capsys):
    data = _without_class(tiny_copy, CLASSES[3])
    out = tmp_path / "stage2"
    code = main(["train", "--dataset", "food-101", "--data-dir", str(data), *LITE, "--image-size", "96",
                 "--init-from", str(trained_run), "--output-dir", str(out)])
    assert code == 2
    _one_paragraph(capsys, "1 of which this dataset lacks", CLASSES[3], "--init-from can add classes")
    assert not out.exists()


def test_ensemble_matches_members_by_class_name_and_checks_every_member(trained_run, tmp_path, capsys):
    order = list(range(len(CLASSES)))[::-1]
    reordered = _reordered(trained_run, tmp_path / "reordered.pt", order)
    plain = evaluate(trained_run, dataset="food-101", data_dir=str(TINY), device="cpu", num_workers=0,
                     predictions=tmp_path / "plain.csv")
    assert main(["ensemble", "--models", str(trained_run), str(reordered), "--dataset", "food-101", "--data-dir",
                 str(TINY), "--device", "cpu", "--num-workers", "0", "--predictions", str(tmp_path / "ens.csv")]) == 0
    assert f'"top1": {plain["top1"]}' in capsys.readouterr().out  # the same model twice: the same ensemble
    ens, ref = (list(csv.DictReader(open(tmp_path / name))) for name in ("ens.csv", "plain.csv"))
    assert [r["pred"] for r in ens] == [r["pred"] for r in ref] and list(ens[0]) == list(ref[0])
    for a, b in zip(ens, ref):
        assert all(float(a[k]) == pytest.approx(float(b[k]), abs=2e-5) for k in a if k.startswith("p_"))

    fewer = _reordered(trained_run, tmp_path / "nine.pt", list(range(9)))
    assert main(["ensemble", "--models", str(trained_run), str(fewer), "--dataset", "food-101", "--data-dir",
                 str(TINY), "--device", "cpu", "--num-workers", "0"]) == 2
    _one_paragraph(capsys, "nine.pt was trained on 9 classes", f"only the data has {CLASSES[9]}")


def test_every_teacher_is_checked_and_matched_by_class_name(trained_run, tmp_path, capsys):
    reordered = _reordered(trained_run, tmp_path / "reordered.pt", list(range(len(CLASSES)))[::-1])
    student = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "image_size": 96}
    x = torch.randn(2, 3, 96, 96)
    same = Teacher(load_teachers([trained_run, trained_run]), student, class_names=CLASSES)
    mixed = Teacher(load_teachers([trained_run, reordered]), student, class_names=CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), same(x))

    fewer = _reordered(trained_run, tmp_path / "nine.pt", list(range(9)))
    out = tmp_path / "kd"
    assert main(["train", "--dataset", "food-101", "--data-dir", str(TINY), *LITE, "--teacher", str(trained_run),
                 str(fewer), "--output-dir", str(out)]) == 2
    _one_paragraph(capsys, "nine.pt was trained on 9 classes", "used as a teacher")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# Typed settings


@pytest.mark.parametrize("yaml_text, needle", [
    ('mixup: "no"\n', "mixup (--mixup) must be true or false, got 'no'"),
    ("lr: [1]\n", "lr (--lr) must be a finite number, got [1]"),
    ("seed: abc\n", "seed (--seed) must be a whole number, got 'abc'"),
    ("lr: .nan\n", "lr (--lr) must be a finite number, got nan"),
    ("epochs: 2.5\n", "epochs (--epochs) must be a whole number"),
    ("teacher: 5\n", "teacher (--teacher) must be a list of non-empty paths"),
    ("data_dir: ''\n", "data_dir (--data-dir) must be a non-empty text"),
    ("early_stopping: 1\n", "early_stopping (--early-stopping) must be true or false, got 1"),
    ("lr: 1e-3\nweight_decay: inf\n", "weight_decay (--weight-decay) must be a finite number"),
    ("- lr\n", "must hold a mapping"),
    ("lr: [1\n", "is not valid YAML"),
])
def test_yaml_settings_are_type_checked(tmp_path, capsys, yaml_text, needle):
    path = tmp_path / "night.yaml"
    path.write_text(yaml_text)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--output-dir", str(out)]) == 2
    _one_paragraph(capsys, needle)
    assert not out.exists()


def test_yaml_text_numbers_and_editor_quirks_are_read(tmp_path):
    path = tmp_path / "night.yaml"
    path.write_bytes(b"\xef\xbb\xbflr: 1e-3\r\nval_fraction: '0.2'\r\nteacher: runs/a\r\n")  # BOM, CRLF, YAML 1.1 text
    cfg = make_config(yaml_path=path)
    assert (cfg.lr, cfg.val_fraction, cfg.teacher) == (0.001, 0.2, ("runs/a",))


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "nan"], "lr (--lr) must be a finite number, got nan"),
    (["--lr", "inf"], "lr (--lr) must be a finite number, got inf"),
    (["--min-lr", "-1"], "--min-lr must be >= 0"),
    (["--image-size", "100000"], "--image-size must be an integer of at least 32 pixels (and at most 2048)"),
    (["--data-dir", ""], "data_dir (--data-dir) must be a non-empty text"),
    (["--output-dir", " "], "output_dir (--output-dir) must be a non-empty text"),
    (["--seed", "-3"], "--seed must be between 0"),
])
def test_cli_settings_are_type_and_range_checked_before_anything_is_written(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert main(["train", *LITE, "--output-dir", str(out), *flags]) == 2
    _one_paragraph(capsys, needle)
    assert not out.exists()


def test_notebook_parameters_are_type_checked():
    from helpers import train

    with pytest.raises(UserError, match="mixup .* must be true or false"):
        train(TrainConfig(mixup="no", output_dir="/nonexistent/never"))  # a notebook's parameters cell
    assert not Path("/nonexistent/never").exists()


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--checkpoint", "", "--data-dir", str(TINY)], "--checkpoint is empty"),
    (["evaluate", "--checkpoint", "x", "--data-dir", str(TINY), "--image-size", "0"], "--image-size must be an integer of at least 32"),
    (["evaluate", "--checkpoint", "x", "--data-dir", str(TINY), "--image-size", "99999"], "(and at most 2048), got 99999"),
    (["evaluate", "--checkpoint", "x", "--data-dir", str(TINY), "--batch-size", "0"], "--batch-size must be a posit"),
    (["ensemble", "--models", "a", "", "--data-dir", str(TINY)], "--models is empty"),
    (["ensemble", "--models", "a", "--data-dir", str(TINY), "--num-workers", "-5"], "--num-workers must be >= 0"),
    (["check-data", "--data-dir", ""], "--data-dir is empty"),
    (["prepare", "--data-dir", str(TINY), "--out", "x", "--short-side", "-1"], "--short-side must be a positive"),
    (["bench", "--steps", "0"], "--steps must be a positive integer"),
])
def test_other_commands_check_their_arguments(argv, needle, capsys):
    assert main(argv) == 2
    _one_paragraph(capsys, needle)


def test_damaged_or_foreign_files_given_as_checkpoints(tmp_path, capsys):
    cases = {"zeroed.pt": b"\0" * 4096, "text.pt": b"hello world\n", "empty.pt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")  # a real torch file, not of this project
    for name in [*cases, "foreign.pt"]:
        assert main(["evaluate", "--checkpoint", str(tmp_path / name), "--data-dir", str(TINY)]) == 2
        _one_paragraph(capsys, name)
    (tmp_path / "dir.pt").mkdir()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "dir.pt"), "--data-dir", str(TINY)]) == 2
    _one_paragraph(capsys, "holds no checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# Exit codes


@pytest.mark.parametrize("exc, code, needle", [
    (UserError("bad input"), 2, "error: bad input"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/metrics.csv"), 2, "/x/metrics.csv (No space left"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/a"), 2, "read-only"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file"), 2,
     "No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (ValueError("a bug"), 1, "Traceback"),
])
def test_exit_codes_are_a_contract(monkeypatch, capsys, exc, code, needle):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_check_tta", fail)
    assert main(["evaluate", "--checkpoint", "x", "--data-dir", "y"]) == code
    assert needle in capsys.readouterr().err
