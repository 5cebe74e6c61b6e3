"""Bad flags and hand-edited run folders end in one clear line, before anything large is allocated
or anything saved is touched; nothing written holds NaN.

Every case is met the way a user meets it: through the command-line tool (exit status 2, one line
on stderr that names the flag or field, no traceback) or through ``cvae.load``. The run they use is
tiny: a 4-feature table with a continuous and a categorical condition, trained for one epoch.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import cvae
from cvae.cli import main
from cvae.config import TrainConfig
from cvae.errors import CvaeError

QUIET = ["--no-progress", "--no-tensorboard", "--no-pictures"]


def _table(path, rows=60):
    rng = np.random.default_rng(0)
    lines = ["a,b,c,d,alcohol,label"]
    for i in range(rows):
        a, b, c, d = rng.normal(size=4).round(3)
        lines.append(f"{a},{b},{c},{d},{10 + rng.normal():.2f},{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("data") / "wine.csv")


def _train_flags(data):
    return ["--data", str(data), "--condition", "alcohol:continuous,label", "--hidden", "8", "--latent-dim", "2",
            "--batch-size", "16", *QUIET]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("runs") / "wine"
    assert main(["train", *_train_flags(data), "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(run, tmp_path):
    """A fresh copy of the trained run, to damage."""
    def make(name="copy"):
        return shutil.copytree(run, tmp_path / name)

    return make


def _cli(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


def _fails(argv, capsys, *fragments):
    """The command fails with one line that holds every fragment, and no traceback."""
    code = _cli(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _edit(run, change):
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg, indent=2))


def _files(run) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# -- flags ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, fragments", [
    (["--seed", "-1"], ["--seed", "got -1"]),
    (["--seed", "9" * 20], ["--seed", "2**63"]),
    (["--weight-decay", "-1"], ["--weight-decay"]),
    (["--lr", "inf"], ["--lr"]),
    (["--latent-dim", "100000000"], ["--latent-dim", "parameters"]),
    (["--hidden", "100000000"], ["--hidden", "parameters"]),
    (["--hidden", "1e8"], ["--hidden"]),
    (["--hidden", "400", "--image-size", "3000x3000"], ["--image-size", "3000x3000", "parameters"]),
    (["--prior", "vamp", "--prior-components", "100000000", "--image-size", "28x28"], ["--prior-components"]),
    (["--latent-dim", "1e8"], ["--latent-dim"]),  # argparse: not a whole number
    (["--labelled", "0"], ["--labelled", "got 0"]),
    (["--labelled", "nan"], ["--labelled"]),
    (["--alpha", "-1"], ["--alpha"]),
    (["--consistency", "inf"], ["--consistency"]),
    (["--model", "m3"], ["unknown model class 'm3'", "m2"]),
    (["--alpha", "2"], ["--alpha does not apply to --objective elbo"]),
    (["--likelihood", "logistic-mixture", "--likelihood-components", "0"], ["--likelihood-components", "from 1 to 64"]),
    (["--likelihood", "bernoulli", "--likelihood-components", "3"], ["--likelihood-components", "has none"]),
    (["--condition-dropout", "1"], ["--condition-dropout", "below 1"]),
    (["--condition", "none", "--condition-dropout", "0.2"], ["--condition-dropout", "a plain VAE"]),
    (["--guidance", "1"], ["--guidance needs a decoder", "--condition-dropout"]),
    (["--guidance", "nan"], ["--guidance", "from 0 to 20"]),
    (["--steer", "nan"], ["--steer", "from 0 to 20"]),
    (["--steer", "1"], ["--steer is for sequence data", "--sequence"]),
])
def test_bad_train_flags_are_one_line_and_touch_nothing(data, tmp_path, capsys, flags, fragments):
    out = tmp_path / "out"
    _fails(["train", *_train_flags(data), *flags, "--out", str(out)], capsys, *fragments)
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()  # nothing written


def test_yaml_and_api_settings_are_checked_the_same_way(data, tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"data: {data}\nlatent_dim: 1e8\n")
    with pytest.raises(CvaeError, match="--latent-dim"):
        cvae.train(yaml_file, out=str(tmp_path / "r"))
    with pytest.raises(CvaeError, match="--seed"):
        TrainConfig(seed=2**63)
    with pytest.raises(CvaeError, match="--weight-decay"):
        cvae.train(data=str(data), weight_decay=-0.5, out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_is_refused(data, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    _fails(["train", *_train_flags(data), "--out", str(target)], capsys, "--out", "is a file")
    assert target.read_text() == "keep me\n"


def test_counts_and_seeds_of_the_other_commands(run, data, tmp_path, capsys):
    out = tmp_path / "s.csv"
    _fails(["sample", str(run), "--n", str(10**12), "-o", str(out)], capsys, "--n", "memory")
    _fails(["sample", str(run), "--n", "1e8", "-o", str(out)], capsys, "--n")
    _fails(["sample", str(run), "--n", "0", "-o", str(out)], capsys, "--n must be a positive")
    _fails(["sample", str(run), "--seed", "-1", "-o", str(out)], capsys, "--seed")
    _fails(["sample", str(run), "--seed", "9" * 20, "-o", str(out)], capsys, "--seed")
    _fails(["traverse", str(run), "--steps", str(10**12), "-o", str(out)], capsys, "--steps", "more than 1,000")
    _fails(["augment", str(run), "--per-class", str(10**12), "-o", str(out)], capsys, "--per-class", "memory")
    _fails(["evaluate", str(run), "--n", "10", "--subset", "middle"], capsys, "--subset", "random", "first")
    _fails(["interpolate", str(run), "--input", str(data), "--steps", str(10**12), "-o", str(out)], capsys,
           "--steps", "more than 1,000")
    _fails(["evaluate", str(run), "--batch-size", str(10**12)], capsys, "--batch-size", "memory")
    _fails(["embed", str(run), "--n", "-5", "-o", str(out)], capsys, "--n must be a positive")
    assert not out.exists()


def test_out_of_memory_in_torch_is_one_line(run, tmp_path, capsys, monkeypatch):
    import cvae.apps

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 320000000000 bytes. Error code 12")

    monkeypatch.setattr(cvae.apps, "sample_to_file", allocate)
    _fails(["sample", str(run), "-o", str(tmp_path / "s.csv")], capsys, "out of memory", "320.0 GB", "--n")


# -- conditions and outputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, fragment", [("1e300", "too far outside the training range"),
                                             ("1e6", "more than 1,000 standard deviations"),  # finite, but meaningless
                                             ("inf", "finite"), ("nan", "finite")])
def test_a_condition_the_model_cannot_compute_with_is_refused(run, tmp_path, capsys, value, fragment):
    out = tmp_path / "s.csv"
    _fails(["sample", str(run), "--condition", f"alcohol={value}", "--n", "3", "-o", str(out)], capsys,
           "--condition", "alcohol", fragment)
    assert not out.exists()


def test_a_far_condition_warns_and_writes_finite_numbers(run, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sample", str(run), "--condition", "alcohol=100", "--n", "3", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --condition alcohol=100") and "standard deviations" in err
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 3 and all(math.isfinite(float(v)) for r in rows for v in r.split(",")[:4])


@pytest.mark.parametrize("value, fragments", [
    (math.nan, ["model.safetensors holds NaN or infinite values", "damaged"]),  # refused as the run is loaded
    (3e38, ["NaN or infinite", "nothing was written"]),  # finite weights whose outputs overflow
])
def test_nan_outputs_are_never_written(copy, data, tmp_path, capsys, value, fragments):
    broken = copy()
    weights = load_file(str(broken / "model.safetensors"))
    last = sorted(k for k in weights if k.startswith("decoder.") and k.endswith("weight"))[-1]
    weights[last] = torch.full_like(weights[last], value)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "cvae-run"})
    for argv in (["sample", str(broken), "--n", "3"], ["reconstruct", str(broken), "--input", str(data)],
                 ["interpolate", str(broken), "--input", str(data), "--n", "1"]):
        out = tmp_path / "x.csv"
        _fails([*argv, "-o", str(out)], capsys, *fragments)
        assert not out.exists()


# -- hand-edited config.json ---------------------------------------------------------------------------

def _set(key, value):
    return lambda cfg: cfg["model"].__setitem__(key, value)


EDITS = {
    "latent_dim changed": (_set("latent_dim", 3), ["does not match", "latent_dim"]),
    "latent_dim 1e9": (_set("latent_dim", 1e9), ["does not match", "latent_dim", "1000000000"]),
    "hidden changed": (_set("hidden", [16]), ["does not match", "hidden"]),
    "data_shape changed": (_set("data_shape", [5]), ["does not match", "data_shape"]),
    "data_shape negative": (_set("data_shape", [-4]), ["data_shape", "at least 1"]),
    "a string for a number": (_set("latent_dim", "2"), ["latent_dim", "whole number"]),
    "a missing key": (lambda cfg: cfg["model"].pop("hidden"), ["hidden", "missing"]),
    "a newer format": (lambda cfg: cfg.__setitem__("format_version", 99), ["newer cvae", "upgrade cvae"]),
    "likelihood changed": (_set("likelihood", "bernoulli"), ["does not match", "likelihood"]),
    "standardize changed": (_set("standardize", False), ["does not match", "standardize"]),
    "prior changed": (_set("prior", "standard"), ["does not match", "prior"]),
    "a class added": (lambda cfg: cfg["model"]["schema"]["attributes"][1]["classes"].append("3"),
                      ["does not match", "schema"]),
    "a section not an object": (lambda cfg: cfg.__setitem__("data", "wine"), ["'data' must be a JSON object"]),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_hand_edited_config_is_one_line(copy, tmp_path, capsys, name):
    change, fragments = EDITS[name]
    broken = copy()
    _edit(broken, change)
    out = tmp_path / "s.csv"
    _fails(["sample", str(broken), "-o", str(out)], capsys, *fragments)
    assert not out.exists()
    with pytest.raises(CvaeError) as e:
        cvae.load(broken)
    assert all(f in str(e.value) for f in fragments), str(e.value)


@pytest.mark.parametrize("raw, fragment", [(b'{"format": "cvae-run", "model": "\xff\xfe"}', "not UTF-8"),
                                           (b'{"format": "cvae-run", "model": {', "not valid JSON")])
def test_unreadable_config_is_one_line(copy, tmp_path, capsys, raw, fragment):
    broken = copy()
    (broken / "config.json").write_bytes(raw)
    _fails(["sample", str(broken), "-o", str(tmp_path / "s.csv")], capsys, "config.json", fragment)
    with pytest.raises(CvaeError, match=fragment):
        cvae.load(broken)


def test_version_1_runs_still_load(run, copy):
    """A run written by format 1 (weights named prior_net.*, log_sigma; no part options) loads as before."""
    old = copy("v1")
    _edit(old, lambda cfg: (cfg.__setitem__("format_version", 1),
                            [cfg["model"].pop(k) for k in ("model_class", "likelihood_options", "prior_options")]))
    names = {"prior.net.weight": "prior_net.weight", "prior.net.bias": "prior_net.bias",
             "likelihood.log_sigma": "log_sigma"}
    weights = load_file(str(old / "model.safetensors"))
    assert set(names) <= set(weights)
    save_file({names.get(k, k): v for k, v in weights.items()}, str(old / "model.safetensors"))
    now, then = cvae.load(run), cvae.load(old)
    assert now.state_dict().keys() == then.state_dict().keys()
    assert all(torch.equal(v, then.state_dict()[k]) for k, v in now.state_dict().items())
    a, b = (m.sample(4, "alcohol=10", generator=torch.Generator().manual_seed(0)) for m in (now, then))
    assert torch.equal(a, b) and torch.isfinite(a).all()


# -- --resume ------------------------------------------------------------------------------------------

def test_resume_drops_a_cut_off_last_metrics_line_with_a_warning(copy, capsys):
    run = copy()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a crash while the row was written
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "metrics.jsonl" in err and "cut off" in err and "Traceback" not in err
    assert err.count("warning: ") == 1  # once, not again from the check before the trainer
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resume_refuses_a_damaged_middle_metrics_line_and_touches_nothing(copy, capsys):
    run = copy()
    (run / "metrics.jsonl").write_text("not json\n" + (run / "metrics.jsonl").read_text())
    before = _files(run)
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET], capsys, "metrics.jsonl", "line 1")
    assert _files(run) == before


@pytest.mark.parametrize("change, fragments", [
    (lambda cfg: cfg["train"].__setitem__("latent_dim", 5), ["train.latent_dim", "model.latent_dim"]),
    (lambda cfg: cfg["train"].__setitem__("seed", "x"), ["'train' settings", "seed"]),
    (lambda cfg: cfg["model"].__setitem__("latent_dim", 1e9), ["does not match", "latent_dim"]),
    (lambda cfg: cfg.__setitem__("format_version", 99), ["upgrade cvae"]),
])
def test_resume_checks_config_json_before_touching_the_run(copy, capsys, change, fragments):
    run = copy()
    _edit(run, change)
    before = _files(run)
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET], capsys, *fragments)
    assert _files(run) == before


def _damage_state(run, how):
    from safetensors import safe_open

    path = run / "trainer_state.safetensors"
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    state = json.loads(meta["state"])
    if how == "a moment missing":
        tensors.pop("optimizer.0.exp_avg")
    elif how == "a NaN weight":
        key = next(k for k in tensors if k.startswith("model."))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    elif how == "a negative mean of squares":
        tensors["optimizer.1.exp_avg_sq"] = -1 - tensors["optimizer.1.exp_avg_sq"]
    elif how == "metadata not JSON":
        meta["state"] = "{bad"
    elif how == "no metadata":
        meta = None
    elif how == "epoch not a count":
        meta["state"] = json.dumps({**state, "epoch": "x"})
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("how, fragment", [
    ("a moment missing", "lacks exp_avg"), ("a NaN weight", "NaN or infinite"),
    ("a negative mean of squares", "negative"), ("metadata not JSON", "not JSON"), ("no metadata", "not JSON"),
    ("epoch not a count", "epoch and bad_epochs counts")])
def test_resume_refuses_a_damaged_trainer_state_and_touches_nothing(copy, capsys, how, fragment):
    run = copy()
    _damage_state(run, how)
    before = _files(run)
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET], capsys, "trainer_state.safetensors is "
           "damaged", fragment, "--overwrite")
    assert _files(run) == before


def test_trained_weights_without_a_trainer_state_are_neither_resumed_from_scratch_nor_replaced(copy, data, capsys):
    run = copy()
    (run / "trainer_state.safetensors").unlink()  # --resume once trained this run again from epoch 1, silently
    before = _files(run)
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET], capsys, "no trainer_state.safetensors",
           "--overwrite")
    _fails(["train", *_train_flags(data), "--epochs", "1", "--out", str(run)], capsys, "already holds a trained model")
    assert _files(run) == before
    assert main(["train", *_train_flags(data), "--epochs", "1", "--out", str(run), "--overwrite"]) == 0


@pytest.mark.parametrize("device, fragment", [("banana", "unknown device 'banana'"), ("cuda", "no CUDA GPU")])
@pytest.mark.parametrize("command", [["sample", "--n", "4", "-o", "OUT.csv"], ["evaluate", "--metrics", "elbo"],
                                     ["embed", "-o", "OUT.csv"], ["aggregate"]])
def test_a_bad_device_on_a_trained_run_is_one_line(run, tmp_path, capsys, command, device, fragment):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = [command[0], str(run), *[a.replace("OUT", str(tmp_path / "out")) for a in command[1:]], "--device", device]
    _fails(argv, capsys, fragment)
    assert not list(tmp_path.iterdir())


def test_weights_with_a_nan_are_refused_before_anything_is_written(copy, tmp_path, capsys):
    run = copy()
    path = run / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[key][...] = float("nan")
    save_file(tensors, path, metadata=meta)
    for argv in (["sample", str(run), "--n", "4", "-o", str(tmp_path / "s.csv")],
                 ["evaluate", str(run), "--metrics", "elbo"],
                 ["classify", str(run), "-o", str(tmp_path / "p.csv")]):
        _fails(argv, capsys, "model.safetensors holds NaN or infinite values", key)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p.csv").exists()
    with pytest.raises(CvaeError, match="NaN or infinite"):
        cvae.load(run)


@pytest.mark.parametrize("edit, fragments", [
    (lambda a: a.__setitem__("classes", a["classes"][::-1]), ["are not those the weights were trained with"]),
    (lambda a: a.__setitem__("classes", [a["classes"][0]] * len(a["classes"])), ["more than once"]),
])
def test_hand_edited_classes_are_refused_on_every_path(copy, tmp_path, capsys, edit, fragments):
    run = copy()  # reordered classes once gave samples of one class under another's name
    _edit(run, lambda cfg: edit(next(a for a in cfg["model"]["schema"]["attributes"] if a["kind"] == "categorical")))
    before = _files(run)
    _fails(["sample", str(run), "--n", "2", "--condition", "alcohol=10,label=1", "-o", str(tmp_path / "s.csv")],
           capsys, *fragments)
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET], capsys, *fragments)
    assert _files(run) == before and not (tmp_path / "s.csv").exists()


def test_a_missing_or_damaged_weights_file_says_how_to_get_it_back(copy, tmp_path, capsys):
    run = copy()
    (run / "model.safetensors").unlink()
    _fails(["sample", str(run), "--n", "2", "-o", str(tmp_path / "s.csv")], capsys, "no model.safetensors (deleted?)",
           "--resume")
    (run / "model.safetensors").write_bytes(b"junk")
    _fails(["sample", str(run), "--n", "2", "-o", str(tmp_path / "s.csv")], capsys, "damaged", "copy of the run",
           "--resume")
    (run / "model.safetensors").unlink()
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), *QUIET]) == 0  # written again
    assert (run / "model.safetensors").is_file()


def test_a_setting_the_run_left_to_its_default_cannot_change_on_resume(copy, capsys):
    run = copy()  # the run did not give --activation: the message says where its value is, not "it was None"
    _fails(["train", "--resume", "--epochs", "2", "--out", str(run), "--activation", "tanh", *QUIET], capsys,
           "cannot change 'activation'", "config.json's 'model' has the value")


@pytest.mark.parametrize("argv, fragment", [
    (["interpolate", "RUN", "--steps", "100000", "-o", "OUT.png"], "--steps 100,000 is more than 1,000"),
    (["traverse", "RUN", "--steps", "5000", "-o", "OUT.png"], "--steps 5,000 is more than 1,000"),
    (["evaluate", "RUN", "--metrics", "nll", "--k", "1000000000"], "--k 1,000,000,000 is more than 100,000"),
])
def test_counts_whose_cost_has_no_use_past_a_bound_are_refused(run, tmp_path, capsys, argv, fragment):
    # each ran on for hours without a word
    _fails([a.replace("RUN", str(run)).replace("OUT", str(tmp_path / "o")) for a in argv], capsys, fragment)


def test_a_condition_given_twice_is_one_line(run, tmp_path, capsys):
    _fails(["sample", str(run), "--n", "2", "--condition", "alcohol=10,label=1,label=2", "-o",
            str(tmp_path / "s.csv")], capsys, "'label' is given twice")


def test_the_python_api_refuses_a_condition_it_cannot_compute_with(run):
    model = cvae.load(run)
    with pytest.raises(CvaeError, match="not finite once standardised"):
        model.sample(3, "alcohol=1e300,label=1")
    with pytest.raises(CvaeError, match="finite"):
        model.sample(3, "alcohol=nan,label=1")
    assert torch.isfinite(model.sample(3, "alcohol=11,label=1")).all()


def test_anomaly_scores_that_are_not_finite_are_never_written(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [f"{x:.3f},{y:.3f},{z:.3f},{i % 2}" for i, (x, y, z) in enumerate(rng.normal(size=(120, 3)))]
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "bad.csv").write_text("a,b,c,label\n0.1,0.2,0.3,0\n1e17,0.2,0.3,0\n")
    run, out = tmp_path / "an", tmp_path / "s.csv"
    assert main(["anomaly", "fit", "--data", str(tmp_path / "n.csv"), "--normal", "0", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["anomaly", "score", str(run), "--data", str(tmp_path / "bad.csv"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "score of 1 input(s) is not finite" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_bad_cell_among_the_normal_rows_is_named_in_the_users_file_and_nothing_is_left(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{'nan' if i == 6 else f'{rng.normal():.3f}'},{rng.normal():.3f},{i % 2}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")  # line 8: a normal row (label 0) with a NaN
    out = tmp_path / "det"
    # it named the run's own copy of the normal rows (its line 5) and left the folder behind
    _fails(["anomaly", "fit", "--data", str(tmp_path / "d.csv"), "--normal", "0", "--epochs", "1", "--out", str(out),
            "--no-progress"], capsys, f"{tmp_path / 'd.csv'}, line 8, column 'a'")
    assert not out.exists()


def test_naming_every_value_normal_is_warned_of(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    assert main(["anomaly", "fit", "--data", str(tmp_path / "d.csv"), "--normal", "0,1", "--epochs", "1", "--out",
                 str(tmp_path / "det"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --normal names every value of 'label' (0, 1)") == 1


@pytest.mark.parametrize("key, value", [("likelihood", "gaussian"), ("activation", "tanh"), ("data_shape", [64])])
def test_a_model_setting_edited_in_config_json_that_keeps_the_shapes_is_refused(key, value, tmp_path):
    # likelihood bernoulli -> gaussian (or relu -> tanh, or [1, 8, 8] -> [64]) kept every tensor's shape, so the
    # run loaded and computed something else; model.safetensors now records the settings it was trained with
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--limit", "200", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--no-pictures", "--no-progress", "--no-tensorboard", "--prior", "conditional", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    before = cfg["model"][key]
    cfg["model"][key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CvaeError) as e:
        cvae.load(run)
    assert f"model setting {key} is {json.dumps(value)} but the weights were trained with {json.dumps(before)}" in str(e.value)
    cfg["model"][key], cfg["model"]["guidance"] = before, 3.0  # the default guidance weight is the user's to change
    (run / "config.json").write_text(json.dumps(cfg))
    assert cvae.load(run).config.guidance == 3.0


def test_resume_keeps_a_default_guidance_weight_edited_in_config_json(tmp_path):
    run = tmp_path / "run"
    common = ["--data", "digits", "--limit", "200", "--hidden", "16", "--latent-dim", "2", "--no-pictures", "--no-progress",
              "--no-tensorboard", "--out", str(run)]
    assert main(["train", *common, "--epochs", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["guidance"] = 3.5  # the user's own default for sampling
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["guidance"] == 3.5  # was rewritten to 2.0
    assert cvae.load(run).config.guidance == 3.5
