"""Weights files never run code: every place weights enter (pretraining and transfer
MODEL.WEIGHTS, --resume, conversion) reads a .pkl and a .pth whose unpickling would
create a file, refuses it with a message naming the opt-out, and creates nothing.
``--unsafe-load`` is that opt-out (and then the code does run: it is a real opt-out)."""
import os
import pickle

import pytest
import torch

from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.checkpoint import UNSAFE_LOAD_FLAG, WeightsFileError, load_pretrained_weights, read_weights
from soco_d2.engine import PretrainTrainer
from tool_utils import load_tool


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appears if the loader runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_files(folder, marker) -> dict:
    """A model-zoo style .pkl and a torch .pth, each holding a CreatesAFile next to real weights."""
    weights = {"stem.conv1.weight": torch.zeros(1).numpy()}
    pkl, pth = os.path.join(folder, "evil.pkl"), os.path.join(folder, "evil.pth")
    with open(pkl, "wb") as f:
        pickle.dump({"model": weights, "__author__": "x", "payload": CreatesAFile(marker)}, f)
    torch.save({"model": {"w": torch.zeros(1)}, "payload": CreatesAFile(marker)}, pth)
    return {".pkl": pkl, ".pth": pth}


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code_ran"
    return evil_files(str(tmp_path), marker), marker


def assert_refused(err, marker):
    message = str(err.value)
    assert "refusing to load" in message and UNSAFE_LOAD_FLAG in message, message
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_read_weights_refuses_code_and_the_opt_out_runs_it(evil, suffix):
    files, marker = evil
    with pytest.raises(WeightsFileError) as err:
        read_weights(files[suffix])
    assert_refused(err, marker)
    read_weights(files[suffix], unsafe_load=True)  # the documented opt-out really is one
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_pretraining_weights(evil, tmp_path, suffix):
    files, marker = evil
    trainer = PretrainTrainer(tiny_cfg(str(tmp_path / "run"), MODEL__WEIGHTS=files[suffix]))
    with pytest.raises(WeightsFileError) as err:
        trainer.resume_or_load(resume=False)
    assert_refused(err, marker)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_resume_from_a_last_checkpoint_naming_it(evil, tmp_path, suffix):
    files, marker = evil
    out = tmp_path / "run"
    out.mkdir()
    os.replace(files[suffix], out / f"model_0000001{suffix}")
    (out / "last_checkpoint").write_text(f"model_0000001{suffix}")
    trainer = PretrainTrainer(tiny_cfg(str(out)))
    with pytest.raises(WeightsFileError) as err:
        trainer.resume_or_load(resume=True)
    assert_refused(err, marker)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_transfer_weights(evil, suffix):
    files, marker = evil
    model = torch.nn.Linear(1, 1)
    with pytest.raises(WeightsFileError) as err:
        load_pretrained_weights(model, files[suffix])
    assert_refused(err, marker)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_convert(evil, tmp_path, suffix, capsys):
    files, marker = evil
    out = tmp_path / "out.pkl"
    with pytest.raises(SystemExit) as exit_:
        load_tool("convert_to_d2").cli([files[suffix], str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and UNSAFE_LOAD_FLAG in err and "Traceback" not in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("content", [os.urandom(3000), b"hello world\n" * 50, b"PK\x03\x04" + os.urandom(200)])
def test_a_garbage_pth_is_called_corrupt_without_advising_the_opt_out(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError) as err:
        read_weights(str(path))
    message = str(err.value)
    assert UNSAFE_LOAD_FLAG not in message and str(path) in message
    assert "corrupt" in message, message


def _garbage_variants(tmp_path):
    """Deterministic garbage: random bytes, truncations and a mangled .npy header, per suffix."""
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    valid = {}
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.ones(4, 3, 7, 7)}, buf)
    valid[".pth"] = buf.getvalue()
    valid[".pkl"] = pickle.dumps({"model": {"stem.conv1.weight": np.ones((4, 3, 7, 7))}, "__author__": "x"})
    buf = io.BytesIO()
    np.save(buf, np.array({"a": {"w": np.zeros(3)}}, dtype=object), allow_pickle=True)
    valid[".npy"] = buf.getvalue()
    files = []
    for suffix, data in valid.items():
        contents = [rng.bytes(1000), data[: len(data) // 3], data[:7]]
        if suffix == ".npy":
            contents.append(data.replace(b"{", b"(", 1))  # header that no longer parses
        for k, content in enumerate(contents):
            path = tmp_path / f"garbage{k}{suffix}"
            path.write_bytes(content)
            files.append(str(path))
    return files


def test_the_converter_gives_clear_errors_on_garbage(tmp_path, capsys):
    for path in _garbage_variants(tmp_path):
        with pytest.raises(SystemExit) as exit_:
            load_tool("convert_to_d2").cli([path, str(tmp_path / "out.pkl"), "-q"])
        assert exit_.value.code == 2, path
        err = capsys.readouterr().err
        assert err.startswith("error: ") and path in err and "Traceback" not in err, err
        assert UNSAFE_LOAD_FLAG not in err, err  # nothing in them is a class to opt into
    assert not (tmp_path / "out.pkl").exists()


# ------------------------------------------------------------------ the tools: refused before anything is built


def _tool_refuses(tool, argv, marker, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_tool(tool).cli(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "refusing to load" in err and UNSAFE_LOAD_FLAG in err, err
    assert "Traceback" not in err and not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_the_tools_refuse_before_anything_is_built(evil, tmp_path, suffix, capsys):
    from engine_utils import BASE_CONFIG, tiny_opts

    files, marker = evil
    out = tmp_path / "out"
    _tool_refuses("pretrain_net", ["--config-file", BASE_CONFIG, *tiny_opts(str(out), MODEL__WEIGHTS=files[suffix])],
                  marker, capsys)
    _tool_refuses("transfer_net", ["--config-file", "transfer/demo_mask_rcnn_R_50_FPN.yaml", "--eval-only",
                                   "MODEL.WEIGHTS", files[suffix], "OUTPUT_DIR", str(out)], marker, capsys)
    _tool_refuses("probe_net", ["--config-file", "demo/soco_r50_fpn.yaml", "--weights", files[suffix],
                                "OUTPUT_DIR", str(out)], marker, capsys)
    assert not out.exists()  # nothing was written: the check ran before any setup
    resume = tmp_path / "resume"
    resume.mkdir()
    os.replace(files[suffix], resume / f"model_0000001{suffix}")
    (resume / "last_checkpoint").write_text(f"model_0000001{suffix}")
    _tool_refuses("pretrain_net", ["--config-file", BASE_CONFIG, "--resume", *tiny_opts(str(resume))], marker, capsys)
    assert sorted(os.listdir(resume)) == ["last_checkpoint", f"model_0000001{suffix}"]
