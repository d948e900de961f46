"""The command line's conventions: every option explained with its default, argparse-style errors and
bare invocation, messages in the words of the command line, honest summaries and listings."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from synth import TINY_MODEL, make_dataset

from torch_label_mae import LabelCompleter, LMAEConfig, hub
from torch_label_mae.cli import _cli_words, build_parser, main
from torch_label_mae.complete_dataset import Report
from torch_label_mae.data import degrade_folder

ROOT = Path(__file__).resolve().parents[1]


def subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if a.option_strings and not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS:
            yield a


@pytest.mark.parametrize("command", sorted(set(subparsers(build_parser())) - {"train"}))
def test_every_option_has_a_help_text_that_shows_its_default(command):
    parser = subparsers(build_parser())[command]
    for a in options(parser):
        assert a.help, f"{command} {a.option_strings[0]}: no help text"
        if a.default not in (None, False) and not isinstance(a, argparse._StoreTrueAction):
            shown = a.default[0] if isinstance(a.default, list) and len(a.default) == 1 else a.default
            assert "%(default)s" in a.help or f"default: {shown}" in a.help, (command, a.option_strings[0])
    text = parser.format_help()
    assert "(default: )" not in text


def test_train_options_have_help_texts_and_no_empty_default():
    from torch_label_mae.train import build_parser as train_parser

    parser = train_parser()
    for a in options(parser):
        assert a.help, f"train {a.option_strings[0]}: no help text"
    assert "(default: )" not in parser.format_help()


def test_bare_invocation_is_an_error_with_usage(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: label-mae") and "a command is required" in err


def test_an_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["completee"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_argument_names_become_flags_in_cli_messages():
    msg = "out_dir /x is the labels folder or inside it. Choose another folder, or pass in_place=True to do so"
    assert (
        _cli_words(msg)
        == "--out /x is the labels folder or inside it. Choose another folder, or pass --in-place to do so"
    )
    assert _cli_words("report /r.json is inside the labels folder") == "--report /r.json is inside the labels folder"
    assert (
        _cli_words("max_batch_pixels must be >= 1; max_pixels too")
        == "--max-batch-pixels must be >= 1; --max-pixels too"
    )
    assert _cli_words("the report is written") == "the report is written"  # only a leading 'report '
    assert _cli_words("mark the holes with another value (e.g. missing_index=254)") == (
        "mark the holes with another value (e.g. --missing-index 254)"
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    LabelCompleter(LMAEConfig.tiny(**dict(TINY_MODEL, num_classes=4))).save_pretrained(folder)
    return folder


def test_out_in_labels_says_the_flag_not_the_python_argument(tmp_path, model_dir, capsys):
    make_dataset(tmp_path / "d", splits=(("train", 2),), size=(32, 32), num_classes=4, seed=0)
    images, labels = tmp_path / "d" / "train" / "images", tmp_path / "d" / "train" / "labels"
    code = main(
        ["complete", "--images", str(images), "--labels", str(labels), "--out", str(labels / "o")]
        + [
            "--model",
            str(model_dir),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--in-place" in err and "in_place" not in err and "out_dir" not in err
    assert "--out " in err


def test_a_rerun_with_nothing_to_do_reports_no_rate(tmp_path, model_dir, capsys):
    make_dataset(tmp_path / "d", splits=(("train", 2),), size=(32, 32), num_classes=4, seed=0)
    images, labels = tmp_path / "d" / "train" / "images", tmp_path / "d" / "train" / "labels"
    degrade_folder(labels, tmp_path / "broken", ratio=0.5, block=8)
    argv = ["complete", "--images", str(images), "--labels", str(tmp_path / "broken"), "--out", str(tmp_path / "o")]
    argv += ["--model", str(model_dir), "--quiet"]
    assert main(argv) == 0
    assert "images/s" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 completed, 2 already done" in out and "images/s" not in out
    assert "images/s" not in Report(total=3, skipped=3, seconds=0.2, finished=True).summary()


def test_a_wrong_voc_root_does_not_offer_a_download(tmp_path, capsys):
    assert main(["complete", "--voc", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a Pascal VOC root" in err and "download=True" not in err


def test_list_marks_bundled_exactly_what_the_wheel_ships(capsys):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    in_wheel = {Path(src).name for src in shipped}
    assert {n for n, e in hub.list_pretrained().items() if e.bundled} == in_wheel
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name, e in hub.list_pretrained().items():
        assert ("bundled: works offline" in lines[name]) == e.bundled, lines[name]
    assert "Hub only" in lines["ccp-m0.5"]


def test_every_command_has_a_one_line_help():
    text = build_parser().format_help()
    for command in subparsers(build_parser()):
        assert re.search(rf"^\s+{re.escape(command)}\s+\S", text, re.M), command


# -- a new user's review of the commands -----------------------------------------------------------
def test_evaluate_a_class_agnostic_model_scores_the_datasets_classes(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", splits=(("val", 2),), num_classes=40)  # more classes than 32 slots
    assert main(["evaluate", "--data", str(data), "--limit", "2", "--json", str(tmp_path / "r.json")]) == 0
    import json

    assert len(json.loads((tmp_path / "r.json").read_text())["pa_iou"]) == 40
    with pytest.warns(UserWarning, match="no known pixel"):  # a caller still records the warnings
        assert main(["evaluate", "--data", str(data), "--ratio", "1"]) == 0  # nothing visible: holes unfilled
    run = subprocess.run(  # printed, a warning reads as the command's, not as a line of the package
        [sys.executable, "-m", "torch_label_mae", "evaluate", "--data", str(data), "--ratio", "1", "--limit", "1"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0 and "label-mae evaluate: warning: labels[0] has no known pixel" in run.stderr
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(data), "--limit", "0"])


def test_evaluate_names_the_label_with_ids_the_dataset_json_lacks(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", splits=(("val", 2),), num_classes=4)
    info = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**info, "classes": info["classes"][:2]}))
    assert main(["evaluate", "--data", str(data), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"val/labels/\S+\.png: \d+ pixels have ids \[[23]", err) and "outside the 2 classes of" in err


@pytest.mark.parametrize("model", ["voc-m0.5", "any-m0.5"])
def test_demo_with_a_preset_fills_the_holes_it_made(tmp_path, model, capsys):
    assert main(["demo", "--model", model, "--out", str(tmp_path / "demo.png")]) == 0
    pa = float(re.search(r"PA-mIoU\s+L-MAE\s+([\d.]+)", capsys.readouterr().out).group(1))
    assert pa > 30  # the holes were filled (voc-m0.5's own hole value is 254, not degrade's 255)


def test_demo_names_the_block_flag(capsys):
    assert main(["demo", "--block", "0"]) == 2 and "--block" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "folder.png").mkdir()  # named as a picture: written to, it fails
    (tmp_path / "file").write_text("")
    assert main(["demo", "--out", str(tmp_path / "folder.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Is a directory" in err and "Traceback" not in err
    data = make_dataset(tmp_path / "d", splits=(("val", 2),))
    images, labels = str(data / "val" / "images"), str(data / "val" / "labels")
    assert main(["complete", "--images", images, "--labels", labels, "--out", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert "cannot make this folder" in err and "another label-mae run" not in err
