"""``vitprobe qk`` end to end (random-init models only; no model hub)."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T

from vitprobe.cli import main
from vitprobe.weights import load_qk


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    cfg = T.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
    )
    T.BertModel(cfg).save_pretrained(path)
    return path


def test_help_lists_qk(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "qk" in capsys.readouterr().out


def test_text_model_with_baseline_and_figures(bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "qk",
            "--model",
            f"hf-text:{bert_dir}",
            "--random-init-baseline",
            "--fold-ln",
            "--top-k",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "[trained]" in text and "[random-init]" in text and "pos.share" in text
    ds = load_qk(out / "qk.nc")
    assert list(ds["model"].values) == ["trained", "random-init"]
    assert ds.sizes["top"] == 2 and ds.attrs["fold_ln"] == 1
    assert "BertModel" in str(ds["model_source"].values[1])
    # the saved (trained) BERT and a seeded re-init differ
    assert not np.allclose(ds["eig_sym"].values[0], ds["eig_sym"].values[1])
    for name in ("qk_spectra.png", "qk_summary.png", "qk_sym_asym.png"):
        assert (out / name).stat().st_size > 1000


def test_vision_model_random_init(tmp_path, capsys):
    """Needs vitprobe.models.load_model (the lead's models package)."""
    pytest.importorskip("vitprobe.models")
    out = tmp_path / "vit"
    rc = main(
        [
            "qk",
            "--model",
            "timm:vit_tiny_patch16_224",
            "--random-init",
            "--out",
            str(out),
            "--no-figures",
        ]
    )
    assert rc == 0
    ds = load_qk(out / "qk.nc")
    assert list(ds["model"].values) == ["random-init"]
    assert dict(ds.sizes)["layer"] == 12 and ds.sizes["head"] == 3
    assert ds.attrs["model_spec"] == "timm:vit_tiny_patch16_224"
    assert abs(float(ds["symmetry"].mean())) < 0.1  # random init: no symmetry
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows if row and row[0].isdigit()] == [str(i) for i in range(1, 13)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--random-init", "--random-init-baseline"], "drop --random-init"),
        (["--top-k", "0"], "--top-k"),
    ],
)
def test_user_errors(bert_dir, tmp_path, capsys, extra, message):
    rc = main(["qk", "--model", f"hf-text:{bert_dir}", "--out", str(tmp_path), *extra])
    assert rc == 1
    assert message in capsys.readouterr().err


def test_missing_text_model(tmp_path, capsys):
    rc = main(["qk", "--model", f"hf-text:{tmp_path / 'nope'}", "--out", str(tmp_path)])
    assert rc == 1
    assert "cannot load" in capsys.readouterr().err


def test_out_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    # the model spec cannot load: the error must be about --out, found first
    rc = main(["qk", "--model", f"hf-text:{tmp_path / 'nope'}", "--out", str(target)])
    assert rc == 1
    assert f"--out {target} is a file, not a folder" in capsys.readouterr().err
