"""``--help`` says what the commands do today: every model family, every dataset layout (from
the layout table), what ``--precision int8`` quantises."""

from __future__ import annotations

import pytest

from vitadapter.cli import main
from vitadapter.data.custom import LAYOUT_NAMES
from vitadapter.data.datasets import LAYOUTS


def help_text(capsys, monkeypatch, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: names never wrapped
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_names_every_family(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    assert ("ViT-Adapter semantic segmentation in pure PyTorch: BEiT or plain ViT (DeiT, "
            "AugReg) backbones with Mask2Former or UperNet heads") in text


def test_evaluate_lists_every_layout(capsys, monkeypatch):
    line = next(line for line in help_text(capsys, monkeypatch, "evaluate").splitlines()
                if line.strip().startswith("--dataset"))
    assert (*LAYOUTS, "custom") == LAYOUT_NAMES and len(LAYOUT_NAMES) == 7
    for name, layout in LAYOUTS.items():
        assert f"{name} (annotations *{layout.label_suffix}: {layout.label_note})" in line
    assert "custom (your own data as `train` reads it: classes.json" in line


@pytest.mark.parametrize("command", ["segment", "evaluate", "serve"])
def test_int8_says_what_it_quantises(capsys, monkeypatch, command):
    text = " ".join(help_text(capsys, monkeypatch, command).split())
    assert ("int8 (CPU, experimental: the Linear layers of the ViT blocks' MLPs quantised "
            "dynamically, per output channel; the rest stays fp32)") in text
