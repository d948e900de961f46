"""Pictures (``viz.py``, ``label-mae show`` / ``demo``): holes differ from void, the legend names the classes
shown, the confidence panel has a colour bar, the truth adds truth and error columns, `show` picks files
spread over the folder or the worst ones, and the options are documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synth import TINY_MODEL

from torch_label_mae import viz
from torch_label_mae.cli import main
from torch_label_mae.io import default_palette
from torch_label_mae.viz import (
    HOLE_COLOR,
    HOLE_STRIPE,
    RIGHT_COLOR,
    VOID_COLOR,
    WRONG_COLOR,
    Row,
    colorize,
    pick_spread,
    pick_worst,
    render,
)

PAL = np.array(default_palette(), dtype=np.uint8).reshape(256, 3)


def crop(picture: Image.Image, box) -> np.ndarray:
    return np.asarray(picture.crop(box))


def is_color(rgb: np.ndarray, color) -> np.ndarray:
    return (rgb == np.array(color, dtype=np.uint8)).all(-1)


def sample(h: int = 24, w: int = 32, seed: int = 0):
    """``(image, truth, broken, completed, confidence)``: truth uses ids 1 and 3 plus a void strip; half
    of it hidden (255); the completion is right on most hole pixels, wrong (id 2) on a block."""
    rng = np.random.default_rng(seed)
    truth = np.ones((h, w), dtype=np.int64)
    truth[:, w // 2 :] = 3
    truth[0, :] = 255  # void in the truth
    holes = np.zeros((h, w), dtype=bool)
    holes[h // 3 :, : w // 2 + 4] = True
    broken = np.where(holes, 255, truth)
    completed = np.where(truth == 255, 1, truth)
    completed[h // 2 :, :6] = 2  # wrong on part of the holes
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    conf = np.where(holes, rng.random((h, w)), 1.0).astype(np.float32)
    return image, truth, broken, completed, conf


# ------------------------------------------------------------------------------------------------
# colours
# ------------------------------------------------------------------------------------------------
def test_holes_and_void_are_drawn_in_different_colours():
    label = np.array([[0, 1, 254, 254, 254, 254, 254, 254], [255, 255, 1, 254, 254, 254, 254, 254]])
    rgb = colorize(label, missing_index=254)  # holes = 254, so 255 is void
    holes, void = label == 254, label == 255
    hole_px = rgb[holes]
    assert (is_color(hole_px, HOLE_COLOR) | is_color(hole_px, HOLE_STRIPE)).all()
    assert is_color(hole_px, HOLE_COLOR).any() and is_color(hole_px, HOLE_STRIPE).any()  # hatched
    assert is_color(rgb[void], VOID_COLOR).all()
    assert not is_color(hole_px, VOID_COLOR).any()
    assert (rgb[label == 1] == PAL[1]).all() and (rgb[0, 0] == PAL[0]).all()
    # both maps given: the truth's void wins over the missing pixels
    rgb = colorize(np.full((2, 2), 255), holes=np.array([[1, 1], [1, 0]], bool), void=np.array([[0, 1], [0, 0]], bool))
    assert is_color(rgb[0, 1], VOID_COLOR) and not is_color(rgb[0, 0], VOID_COLOR)


def test_in_a_picture_holes_differ_from_void_of_the_truth():
    image, truth, broken, completed, conf = sample()
    pic, layout = render([Row(image, broken, completed, conf, truth)], panel_width=32)
    panel = crop(pic, layout["boxes"][0]["input"])
    holes = (broken == 255) & (truth != 255)
    assert not is_color(panel[holes], VOID_COLOR).any()
    assert is_color(panel[truth == 255], VOID_COLOR).all()
    texts = [t for t, _ in layout["legend"]]
    assert "hole (to fill)" in texts and "void" in texts


# ------------------------------------------------------------------------------------------------
# legend
# ------------------------------------------------------------------------------------------------
def test_legend_lists_exactly_the_classes_present_with_their_colours():
    image, truth, broken, completed, conf = sample()
    names = [f"name{i}" for i in range(6)]
    pic, layout = render([Row(image, broken, completed, conf, truth)], class_names=names, panel_width=32)
    assert layout["classes"] == [1, 2, 3]  # 1 and 3 in the truth, 2 only in the completion
    legend = dict(layout["legend"])
    assert [t for t in legend if t.startswith("name")] == ["name1", "name2", "name3"]
    for i in (1, 2, 3):
        x0, y0, x1, y1 = legend[f"name{i}"]
        assert (crop(pic, (x0 + 2, y0 + 2, x1 - 1, y1 - 1)) == PAL[i]).all()  # the swatch's inside
    assert "right (on holes)" in legend and "wrong (on holes)" in legend
    # no names: ids; no truth: no error colours; void only when drawn
    pic, layout = render([Row(image, broken, completed)], panel_width=32)
    texts = [t for t, _ in layout["legend"]]
    assert texts == ["class 1", "class 2", "class 3", "hole (to fill)"]


def test_legend_merges_the_classes_of_all_rows():
    a = np.zeros((8, 8), dtype=np.int64)
    b = np.full((8, 8), 7, dtype=np.int64)
    b[:4] = 255
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    _, layout = render([Row(image, a, a), Row(image, b, np.full((8, 8), 5))], panel_width=16)
    assert layout["classes"] == [0, 5, 7]


# ------------------------------------------------------------------------------------------------
# confidence colour bar
# ------------------------------------------------------------------------------------------------
def test_confidence_panel_has_a_monotone_colour_bar_from_1_to_0():
    image, truth, broken, completed, conf = sample()
    pic, layout = render([Row(image, broken, completed, conf)], panel_width=64)
    box = layout["colorbars"][0]
    conf_box = layout["boxes"][0]["confidence"]
    assert box[0] > conf_box[2] and box[1] == conf_box[1] and box[3] == conf_box[3]  # right of the panel
    strip = crop(pic, box).astype(int)
    assert (strip == strip[:, :1]).all()  # rows are uniform
    column = strip[:, 0]
    brightness = column.sum(-1)
    assert (np.diff(brightness) <= 0).all() and brightness[0] - brightness[-1] > 300  # bright (1) .. dark (0)
    assert (column[0] == viz.heatmap(np.ones((1, 1)))[0, 0]).all()
    assert (column[-1] == viz.heatmap(np.zeros((1, 1)))[0, 0]).all()
    _, layout = render([Row(image, broken, completed)], panel_width=32)  # no confidence: no bar
    assert layout["colorbars"] == [None] and "confidence" not in layout["columns"]


# ------------------------------------------------------------------------------------------------
# truth and error columns
# ------------------------------------------------------------------------------------------------
def test_truth_adds_truth_and_error_columns_red_exactly_where_wrong_on_holes():
    image, truth, broken, completed, conf = sample()
    pic, layout = render([Row(image, broken, completed, conf, truth, name="x")], panel_width=32)
    assert layout["columns"] == ["image", "input", "completed", "truth", "error", "confidence"]
    err = crop(pic, layout["boxes"][0]["error"])
    scored = (broken == 255) & (truth != 255)
    wrong = scored & (completed != truth)
    assert wrong.any() and (scored & ~wrong).any()
    np.testing.assert_array_equal(is_color(err, WRONG_COLOR), wrong)
    np.testing.assert_array_equal(is_color(err, RIGHT_COLOR), scored & ~wrong)
    acc = 1 - wrong.sum() / scored.sum()
    assert layout["accuracy"][0] == pytest.approx(acc)
    assert f"PA accuracy on holes {acc:.1%}" in layout["titles"][0]
    truth_panel = crop(pic, layout["boxes"][0]["truth"])
    assert (truth_panel[truth == 3] == PAL[3]).all()
    _, layout = render([Row(image, broken, completed, conf)], panel_width=32)
    assert layout["columns"] == ["image", "input", "completed", "confidence"] and layout["accuracy"] == [None]


def test_panels_are_scaled_to_the_panel_width_and_tensors_are_accepted():
    image, truth, broken, completed, conf = sample(h=24, w=32)
    row = Row(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(broken), torch.from_numpy(completed))
    pic, layout = render([row], panel_width=96)
    x0, y0, x1, y1 = layout["boxes"][0]["completed"]
    assert (x1 - x0, y1 - y0) == (96, 72)
    assert pic.width < 4 * 96 + 60


def test_titles_use_a_font_that_scales():
    small, big = viz.load_font(12), viz.load_font(32)
    height = lambda f: f.getbbox("Hg")[3] - f.getbbox("Hg")[1]  # noqa: E731
    if not hasattr(big, "size"):  # pragma: no cover - Pillow < 10.1 without DejaVu: the bitmap font
        pytest.skip("no scalable font available")
    assert height(big) > 2 * height(small) > 0


# ------------------------------------------------------------------------------------------------
# picking files
# ------------------------------------------------------------------------------------------------
def test_pick_spread_is_evenly_spaced_and_includes_first_and_last():
    names = [f"f{i:02d}" for i in range(10)]
    shuffled = names[::-1]
    assert pick_spread(shuffled, 4) == ["f00", "f03", "f06", "f09"]
    assert pick_spread(names, 2) == ["f00", "f09"]
    assert pick_spread(names, 3) == ["f00", "f04", "f09"] or pick_spread(names, 3) == ["f00", "f05", "f09"]
    assert pick_spread(names, 1) == ["f04"]
    assert pick_spread(names, 10) == names and pick_spread(names, 50) == names
    assert pick_spread([], 4) == [] and pick_spread(names, 0) == []
    for n in range(2, 10):
        picked = pick_spread(names, n)
        assert len(set(picked)) == n and picked[0] == "f00" and picked[-1] == "f09"
        gaps = np.diff([names.index(p) for p in picked])
        assert gaps.max() - gaps.min() <= 1


def test_pick_worst_takes_the_lowest_scores_unscored_last():
    scores = {"a": 0.9, "b": 0.5, "c": None, "d": 0.7, "e": 0.5}
    assert pick_worst(scores, 2) == ["b", "e"]
    assert pick_worst(scores, 3) == ["b", "e", "d"]
    assert pick_worst(scores, 10) == ["b", "e", "d", "a", "c"]


# ------------------------------------------------------------------------------------------------
# label-mae show
# ------------------------------------------------------------------------------------------------
def write_label(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(default_palette())
    im.save(path)


def make_show_folder(root: Path, n: int = 6) -> dict[str, Path]:
    """images / broken / completed / truth folders; file k's completion is wrong on k blocks of holes."""
    dirs = {k: root / k for k in ("images", "broken", "completed", "truth")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for k in range(n):
        image, truth, broken, completed, _ = sample(seed=k)
        completed = np.where(truth == 255, 1, truth)
        wrong = [4, 1, 5, 0, 3, 2][k % 6]  # f003 best, f002 worst
        completed[8 : 8 + 2 * wrong, :4] = 2
        Image.fromarray(image).save(dirs["images"] / f"f{k:03d}.png")
        for name, ids in (("broken", broken), ("completed", completed), ("truth", truth)):
            write_label(dirs[name] / f"f{k:03d}.png", ids)
    return dirs


def show(dirs, out: Path, *extra: str) -> int:
    args = ["show", "--images", str(dirs["images"]), "--labels", str(dirs["broken"])]
    return main([*args, "--completed", str(dirs["completed"]), "--out", str(out), *extra])


def picked(text: str) -> list[str]:
    return text.strip().splitlines()[-1].split("): ")[-1].split()


def test_show_spreads_its_picks_by_default(tmp_path, capsys):
    dirs = make_show_folder(tmp_path, n=6)
    assert show(dirs, tmp_path / "a.png", "--limit", "3") == 0
    out = capsys.readouterr().out
    assert picked(out) == ["f000", "f002", "f005"] or picked(out) == ["f000", "f003", "f005"]
    assert "image | input | completed (" in out.replace(")", " (")


def test_show_with_truth_picks_the_worst_and_adds_the_columns(tmp_path, capsys):
    dirs = make_show_folder(tmp_path, n=6)
    assert show(dirs, tmp_path / "w.png", "--truth", str(dirs["truth"]), "--limit", "2") == 0
    out = capsys.readouterr().out
    assert picked(out) == ["f002", "f000"]  # 5 then 4 wrong blocks
    assert "truth | error" in out
    assert show(dirs, tmp_path / "s.png", "--truth", str(dirs["truth"]), "--limit", "2", "--pick", "spread") == 0
    assert picked(capsys.readouterr().out) == ["f000", "f005"]
    assert show(dirs, tmp_path / "x.png", "--pick", "worst") == 2
    assert "--truth" in capsys.readouterr().err
    assert show(dirs, tmp_path / "in.png", "--truth", str(dirs["truth"]), "--out", str(dirs["truth"] / "p.png")) == 2


def test_show_names_a_truth_of_another_size_and_writes_the_format_its_name_asks(tmp_path, capsys):
    dirs = make_show_folder(tmp_path, n=2)
    small = np.array(Image.open(dirs["truth"] / "f001.png"))[:-3, :-2]
    write_label(dirs["truth"] / "f001.png", small)
    assert show(dirs, tmp_path / "w.png", "--truth", str(dirs["truth"])) == 2  # --pick worst reads every truth
    err = capsys.readouterr().err
    assert "f001.png: the truth is " in err and "but the label is" in err and "broadcast" not in err
    assert show(dirs, tmp_path / "p.jpg") == 0
    with Image.open(tmp_path / "p.jpg") as im:
        assert im.format == "JPEG"
    for name in ("p", "p.txt"):
        assert show(dirs, tmp_path / name) == 2
        assert "a picture's name ends in a format Pillow writes" in capsys.readouterr().err
        assert not (tmp_path / name).exists()


def test_show_reads_the_holes_as_its_model_marks_them(tmp_path, capsys, monkeypatch):
    """voc-m0.5 (or a fit's folder) marks holes 254: without --missing-index, show draws those as holes."""
    import torch_label_mae.viz as viz

    dirs = make_show_folder(tmp_path, n=2)
    seen = []
    real = viz.save_picture
    monkeypatch.setattr(viz, "save_picture", lambda rows, path, **kw: (seen.append(kw), real(rows, path, **kw))[1])
    assert show(dirs, tmp_path / "a.png") == 0
    assert show(dirs, tmp_path / "b.png", "--model", "voc-m0.5") == 0
    assert show(dirs, tmp_path / "c.png", "--model", "voc-m0.5", "--missing-index", "255") == 0
    assert [kw["missing_index"] for kw in seen] == [255, 254, 255]
    assert seen[1]["class_names"][:2] == ["background", "aeroplane"]


def test_show_takes_class_names_from_a_dataset_json(tmp_path, capsys, monkeypatch):
    dirs = make_show_folder(tmp_path, n=2)
    classes = tmp_path / "dataset.json"
    classes.write_text(json.dumps({"classes": ["zero", "one", "two", "three"]}))
    seen = {}
    real = viz.save_picture

    def spy(rows, path, **kw):
        seen.update(kw)
        out, layout = real(rows, path, **kw)
        seen["layout"] = layout
        return out, layout

    monkeypatch.setattr(viz, "save_picture", spy)
    assert show(dirs, tmp_path / "n.png", "--classes", str(classes), "--panel-width", "40") == 0
    texts = [t for t, _ in seen["layout"]["legend"]]
    assert texts[:3] == ["one", "two", "three"] and seen["panel_width"] == 40
    classes.write_text("[1, 2]")
    assert show(dirs, tmp_path / "bad.png", "--classes", str(classes)) == 2
    assert "classes" in capsys.readouterr().err


def test_demo_draws_truth_and_error_columns_with_class_names(tmp_path, monkeypatch, capsys):
    from torch_label_mae import LabelCompleter, LMAEConfig

    names = [f"c{i}" for i in range(11)]
    model = tmp_path / "model"
    LabelCompleter(LMAEConfig.tiny(**dict(TINY_MODEL, num_classes=11, class_names=names))).save_pretrained(model)
    seen = {}
    real = viz.save_picture

    def spy(rows, path, **kw):
        out, seen["layout"] = real(rows, path, **kw)
        return out, seen["layout"]

    monkeypatch.setattr(viz, "save_picture", spy)
    assert main(["demo", "--model", str(model), "--device", "cpu", "--out", str(tmp_path / "d.png")]) == 0
    layout = seen["layout"]
    assert layout["columns"] == ["image", "input", "completed", "truth", "error", "confidence"]
    assert all(a is not None for a in layout["accuracy"]) and "nearest fill" in layout["titles"][0]
    assert {t for t, _ in layout["legend"]} >= {names[i] for i in layout["classes"]} | {"hole (to fill)"}
    assert (tmp_path / "d.png").is_file()


def test_show_and_demo_help_name_the_new_options_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--truth", "--pick", "--limit", "--classes", "--model", "--missing-index", "--panel-width"):
        assert flag in text, flag
    for default in ("(default: worst with --truth, else spread)", "(default: 400)", "(default: --model's,"):
        assert default in text, default
    assert text.count("(default: none, ids shown)") == 2 and "(default: none)" in text


def test_a_map_of_another_size_than_the_label_is_refused_naming_it():
    label = np.zeros((20, 30), dtype=np.int64)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"row 'x': the completed label is \(10, 15\)"):
        viz.render([viz.Row(image, label, label[:10, :15], name="x")])
    with pytest.raises(ValueError, match="truth"):
        viz.render([viz.Row(image, label, label, truth=label[:, :29], name="x")])
