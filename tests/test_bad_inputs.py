"""Every command, fed the bad inputs users and attackers try: one message and its exit code,
never a traceback (an uncaught exception would escape ``main`` and fail the test)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from admmcompress import create_model
from admmcompress.cli import main
from admmcompress.formats.admmz import save_admmz
from admmcompress.formats.safetensors_model import save_model
from helpers import CONFIGS, DATA_DIR


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    lenet = create_model("lenet5")
    out = {}
    out["garbage"] = root / "garbage.admmz"
    out["garbage"].write_bytes(b"\x00\x01not a model" * 10)
    out["empty"] = root / "empty.safetensors"
    out["empty"].write_bytes(b"")
    out["model"] = root / "run" / "model.safetensors"
    out["model"].parent.mkdir()
    meta = {"dataset": "mnist", "input_shape": [1, 28, 28]}
    save_model(out["model"], lenet, {}, model_name="lenet5", model_args={}, extra=meta)
    out["admmz"] = root / "m.admmz"
    save_admmz(out["admmz"], lenet, model_name="lenet5", model_args={}, input_shape=(1, 28, 28))
    out["truncated"] = root / "t.admmz"
    out["truncated"].write_bytes(out["admmz"].read_bytes()[:300])
    out["import"] = root / "i.admmz"
    save_admmz(out["import"], lenet, model_name="admmcompress.models.mnist:LeNet5", model_args={})
    out["state"] = root / "w.pt"
    torch.save(lenet.state_dict(), out["state"])
    out["other_set"] = root / "cifar.safetensors"
    save_model(out["other_set"], lenet, {}, model_name="lenet5", model_args={},
               extra={"dataset": "image_folder", "input_shape": [3, 16, 16]})  # fmt: skip
    images = root / "images"
    for split in ("train", "val"):
        (images / split / "a").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(images / split / "a" / "0.png")
    out["images"] = images
    out["bad_yaml"] = root / "bad.yaml"
    out["bad_yaml"].write_text("model: [lenet5\nrules: {")
    out["unknown_key"] = root / "unknown.yaml"
    cfg = yaml.safe_load((CONFIGS / "tiny_test.yaml").read_text())
    out["unknown_key"].write_text(yaml.safe_dump({**cfg, "modle": 1}))
    out["not_json_report"] = root / "broken_run"
    out["not_json_report"].mkdir()
    (out["not_json_report"] / "report.json").write_text("{not json")
    bomb = root / "gz" / "MNIST" / "raw"
    bomb.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        with gzip.open(bomb / f"{stem}.gz", "wb", compresslevel=1) as f:
            for _ in range(300):
                f.write(bytes(1 << 20))  # 300 MB of zeros in a few hundred KB
    out["bomb_root"] = root / "gz"
    out["tiny_config"] = root / "tiny.yaml"
    out["tiny_config"].write_text(yaml.safe_dump({**cfg, "runtime": {"progress": False}}))
    return out


CASES = {
    "run: no such config": ["run", "{root}/none.yaml"],
    "run: invalid YAML": ["run", "{bad_yaml}"],
    "run: an unknown key": ["run", "{unknown_key}"],
    "run: a gzip bomb with checks off": [
        "run",
        "{tiny_config}",
        "--set",
        "data.verify=false",
        "--data-dir",
        "{bomb_root}",
        "--out",
        "{root}/bombrun",
    ],
    "eval: no such file": ["eval", "{root}/none.admmz"],
    "eval: garbage": ["eval", "{garbage}"],
    "eval: an empty file": ["eval", "{empty}"],
    "eval: a truncated .admmz": ["eval", "{truncated}"],
    "eval: a state dict": ["eval", "{state}"],
    "eval: an import path without consent": ["eval", "{import}"],
    "eval: another data set": [
        "eval",
        "{model}",
        "--dataset",
        "image_folder",
        "--data-dir",
        "{images}",
    ],
    "eval: a file naming another data set": ["eval", "{other_set}", "--data-dir", "{images}"],
    "eval: an unknown data set": ["eval", "{model}", "--dataset", "svhn"],
    "eval: batch size 0": ["eval", "{model}", "--batch-size", "0", "--data-dir", str(DATA_DIR)],
    "export: garbage": ["export", "{garbage}"],
    "export: an input shape that does not fit": [
        "export",
        "{model}",
        "--compact",
        "--input-shape",
        "3,32,32",
        "--out",
        "{root}/c.admmz",
    ],
    "export: an absurd input shape": ["export", "{model}", "--input-shape", "65536,65536,65536"],
    "export: onto its source": ["export", "{admmz}", "--out", "{admmz}"],
    "export: an unknown format": ["export", "{model}", "--format", "tflite"],
    "inspect: not an .admmz": ["inspect", "{model}"],
    "inspect: garbage": ["inspect", "{garbage}"],
    "inspect: truncated": ["inspect", "{truncated}"],
    "report: no such folder": ["report", "{root}/none"],
    "report: invalid report.json": ["report", "{not_json_report}"],
    "sensitivity: no samples": ["sensitivity", "{tiny_config}", "--samples", "0"],
    "sensitivity: a rate below 1": ["sensitivity", "{tiny_config}", "--rate", "0.5"],
    "sensitivity: weights that do not fit": [
        "sensitivity",
        "{tiny_config}",
        "--weights",
        "{other_set}",
        "--set",
        "model=lenet300",
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_command_answers_bad_input_with_one_message(
    case: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    values = {k: str(v) for k, v in files.items()} | {"root": str(files["garbage"].parent)}
    argv = [a.format(**values) for a in CASES[case]]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code)
    _, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert err.strip() and len(err.strip().splitlines()) <= 6, err
    shutil.rmtree(files["garbage"].parent / "bombrun", ignore_errors=True)


def test_the_exit_codes_are_documented() -> None:
    from admmcompress.cli import errors

    readme = (CONFIGS.parent / "README.md").read_text()
    for code in (errors.BAD_INPUT, errors.TRAINING_STOPPED, errors.CONSTRAINT_BROKEN,
                 errors.MACHINE, errors.INTERRUPTED):  # fmt: skip
        assert f"| {code} |" in readme
    assert json.dumps(errors.BAD_INPUT) == "2"
