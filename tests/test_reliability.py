"""A mistake gets a clear answer and damages nothing: run folders are data, refused launches
leave the folder as it was, exports are atomic, non-finite numbers stop a run, recipes are strict."""

import hashlib
import json
import shutil
import socket

import pytest
import torch

from conftest import same_checkpoint_weights, tiny_run
from flowrl.config import build_config, load_config
from flowrl.objectives import OBJECTIVES, register_objective
from flowrl.objectives.sde import SdeObjective, SdeOptions
from flowrl.trainer import train

MARKER = []


class Payload:
    """Unpickling this would call list.append: what a crafted state.pt could make run."""

    def __reduce__(self):
        return (MARKER.append, ("ran",))


def test_a_crafted_checkpoint_is_refused_without_running_anything(tiny_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(tiny_dir, out, "iterations=1"))
    state = out / "checkpoint" / "state.pt"
    torch.save({"iteration": 1, "payload": Payload()}, state)
    with pytest.raises(ValueError, match="state.pt differs from its manifest"):
        train(tiny_run(tiny_dir, out, "iterations=2"))
    manifest = out / "checkpoint" / "manifest.json"  # crafted with a manifest that matches
    record = json.loads(manifest.read_text())
    record["files"]["state.pt"] = hashlib.sha256(state.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="a run folder is data, not code"):
        train(tiny_run(tiny_dir, out, "iterations=2"))
    assert MARKER == []


def test_a_damaged_checkpoint_resumes_from_the_one_before_it(tiny_dir, tmp_path, capsys):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    train(tiny_run(tiny_dir, straight, "iterations=4", "checkpoint_every=2"))
    train(tiny_run(tiny_dir, damaged, "iterations=3", "checkpoint_every=2"))  # checkpoints of iterations 2 and 3
    assert [p.name for p in (damaged / "checkpoints").iterdir()] == ["iter_00002"]
    weights = damaged / "checkpoint" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a full disk, say
    train(tiny_run(tiny_dir, damaged, "iterations=4", "checkpoint_every=2"))
    assert "skipped damaged checkpoints (checkpoint:" in capsys.readouterr().err
    assert (damaged / "checkpoint.damaged" / "trainable.safetensors").stat().st_size == 100  # kept aside
    assert same_checkpoint_weights(straight, damaged)  # iteration 2's checkpoint, then 3 and 4 again
    assert sorted(p.name for p in (damaged / "checkpoints").iterdir()) == ["iter_00002"]  # keep_checkpoints=2


def test_a_refused_launch_leaves_config_json_as_it_was(tiny_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(tiny_dir, out, "iterations=1"))
    before = (out / "config.json").read_text()
    with pytest.raises(ValueError, match="holds a checkpoint of a different run"):
        train(tiny_run(tiny_dir, out, "iterations=2", "method=dance_grpo", "method.num_steps=4", "method.group_size=3"))
    assert (out / "config.json").read_text() == before


def test_a_failed_export_keeps_the_last_one_whole(tiny_dir, tmp_path, monkeypatch):
    from flowrl.policies.toy import ToyPolicy

    out = tmp_path / "run"
    train(tiny_run(tiny_dir, out, "iterations=1"))
    weights = (out / "final" / "model.safetensors").read_bytes()

    def full_disk(self, directory, lora, network=None):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ToyPolicy, "export", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_run(tiny_dir, out, "iterations=2"))
    assert (out / "final" / "model.safetensors").read_bytes() == weights


def test_a_non_finite_loss_stops_the_run_before_it_reaches_the_weights(tiny_dir, tmp_path):
    @register_objective("test_nan", options=SdeOptions)
    class NotANumber(SdeObjective):
        def loss(self, velocity, batch, micro, normalizer):
            loss, stats = super().loss(velocity, batch, micro, normalizer)
            return loss * float("nan"), stats

    out = tmp_path / "run"
    try:
        train(tiny_run(tiny_dir, out, "iterations=1"))
        saved = (out / "checkpoint" / "trainable.safetensors").read_bytes()
        with pytest.raises(FloatingPointError, match="the loss of iteration 2 is nan"):
            train(tiny_run(tiny_dir, out, "iterations=2", "objective=test_nan"))
    finally:
        OBJECTIVES.unregister("test_nan")
    assert (out / "checkpoint" / "trainable.safetensors").read_bytes() == saved  # iteration 1's, untouched


@pytest.mark.parametrize("override", ["lr=nan", "guidance=inf", "beta=-inf"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ValueError, match="must be a finite number"):
        build_config({}, [override])


def test_a_recipe_naming_a_key_twice_is_refused_with_its_line(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("iterations: 3\nlr: 1.0e-3\niterations: 5\n")
    with pytest.raises(ValueError, match=r"twice.yaml, line 3: the key 'iterations' appears twice"):
        load_config(recipe)
    broken = tmp_path / "broken.yaml"
    broken.write_text("iterations: 3\nmethod_options: {window: 2\n")
    with pytest.raises(ValueError, match=r"broken.yaml, line 3"):
        load_config(broken)


def test_the_cli_ends_any_error_in_one_line_and_shows_the_traceback_on_request(monkeypatch, capsys):
    from flowrl import cli

    def broken(args):
        raise RuntimeError("the reward plug-in raised")

    monkeypatch.setattr(cli, "cmd_methods", broken)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: rebind(parser(), "methods", broken))
    assert cli.main(["methods"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: the reward plug-in raised" in err[0] and "--debug" in err[0]
    with pytest.raises(RuntimeError, match="plug-in raised"):
        cli.main(["--debug", "methods"])


def rebind(parser, command, func):
    """The parser with `command` dispatching to `func`."""
    for action in parser._subparsers._group_actions:
        action.choices[command].set_defaults(func=func)
    return parser


def test_a_checkpoint_is_tensors_and_plain_values(tiny_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(tiny_dir, out, "iterations=1"))
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)  # would raise on any other object
    assert state["iteration"] == 1 and json.dumps(state["config"])


def test_a_chain_method_with_one_sample_per_prompt_is_refused():
    with pytest.raises(ValueError, match="group_size=1: a prompt's samples are compared with each other"):
        build_config({}, ["method.group_size=1"])
    build_config({}, ["method=branch_grpo", "method.group_size=1"])  # a tree compares its own leaves


def test_the_start_line_states_the_time_cap(tiny_dir, tmp_path, capsys):
    train(tiny_run(tiny_dir, tmp_path / "run", "iterations=1", "minutes=8.5"))
    assert "or 8.5 minutes, whichever comes first (minutes=0 lifts that cap)" in capsys.readouterr().err


def test_pretraining_counts_must_not_be_negative():
    from flowrl.toy_pretraining import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steps", "-1"])
    assert build_parser().parse_args(["--steps", "0"]).steps == 0


def test_help_config_shows_the_values_that_would_run(capsys):
    from flowrl import cli

    assert cli.main(["train", "llm_toy", "lr=5e-4", "--help-config"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines() if line[1:2] == " "}
    assert lines["lr"].startswith("*") and "0.0005" in lines["lr"]  # the override
    assert lines["policy"].startswith("*") and "'llm_toy'" in lines["policy"]  # the recipe
    assert lines["seed"].startswith(" ")  # a default
    assert cli.main(["train", "--help-config"]) == 0
    assert "'toy'" in capsys.readouterr().out  # no recipe named: the default run's, toy.yaml


def test_toy_prompts_are_checked_word_by_word_before_any_model_loads(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na purple unicorn\n")
    with pytest.raises(ValueError, match=r"prompts.txt', line 2: the prompt 'a purple unicorn' uses words .*'unicorn'"):
        build_config({}, [f"prompts={prompts}"])


def test_out_naming_a_file_and_a_bad_port_are_refused(tmp_path):
    from flowrl.rewards.serve import _parser

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(ValueError, match="names a file; expected a run directory"):
        build_config({}, [f"out={afile}"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["pickscore", "--port", "99999"])


def test_a_truncated_weights_file_is_named(tiny_dir, tmp_path):
    import shutil

    from flowrl.policies.toy import load_toy

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        load_toy(broken)


def test_ship_refuses_an_untrained_or_broken_model_and_keeps_the_one_it_replaces(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from flowrl.shipping import ship

    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "cache"))
    shipped, source = tmp_path / "assets" / "model", tmp_path / "new"
    shipped.mkdir(parents=True)
    source.mkdir()
    save_file({"w": torch.zeros(2)}, str(shipped / "model.safetensors"))
    before = (shipped / "model.safetensors").read_bytes()
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(source / "model.safetensors"))
    with pytest.raises(ValueError, match="non-finite weights"):
        ship(source, shipped, steps=10)
    save_file({"w": torch.ones(2)}, str(source / "model.safetensors"))
    with pytest.raises(ValueError, match="trained for 0 steps"):
        ship(source, shipped, steps=0)
    assert (shipped / "model.safetensors").read_bytes() == before
    backup = ship(source, shipped, steps=10)
    assert (backup / "model.safetensors").read_bytes() == before
    assert (shipped / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert oct((shipped / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_of_a_run_take_the_umask_s_mode(tiny_dir, tmp_path):
    train(tiny_run(tiny_dir, tmp_path / "run", "iterations=1"))
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert (
        modes["trainable.safetensors"]
        == modes["model.safetensors"]
        == modes["metrics.jsonl"]
        == 0o666 & ~current_umask()
    )


def test_a_run_that_trains_nothing_stops_with_a_checkpoint_and_says_why(tiny_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_run(tiny_dir, out, "iterations=10", "reward=conftest:constant_reward", "stall_iterations=3")
    with pytest.raises(ValueError, match=r"no sample trained in the first 3 iterations \(up to 3, checkpoint saved\)"):
        train(config)
    assert json.loads((out / "checkpoint" / "manifest.json").read_text())["iteration"] == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3] and all(r["skipped_update"] == 1.0 for r in records[1:])
    train(
        tiny_run(tiny_dir, tmp_path / "free", "iterations=4", "reward=conftest:constant_reward", "stall_iterations=0")
    )


def test_sample_grids_carry_a_caption_under_each_image(tmp_path):
    import numpy as np
    from PIL import Image

    from flowrl.images import CAPTION_HEIGHT, save_grid

    images = torch.zeros(3, 3, 8, 8)  # black images
    path = save_grid(images, tmp_path / "grid.png", nrow=2, scale=2, captions=["a red circle", "b", "c"])
    sheet = np.asarray(Image.open(path).convert("L"))
    assert sheet.shape == (2 * (16 + CAPTION_HEIGHT + 2) + 2, 2 * (16 + 2) + 2)  # 2 rows of 2 cells
    strip = sheet[2 + 16 : 2 + 16 + CAPTION_HEIGHT, 2 : 2 + 16]  # under the first image: white with black text
    assert (strip == 255).mean() > 0.5 and (strip < 128).any()
    with pytest.raises(ValueError, match="got 2 captions for 3 images"):
        save_grid(images, tmp_path / "bad.png", captions=["a", "b"])


def test_the_reward_curve_has_labelled_ticks_on_both_axes(tmp_path):
    import numpy as np
    from PIL import Image

    from flowrl.run_files import draw_curve

    records = [{"iteration": i, "reward/mean": 0.1 * i} for i in range(1, 9)]
    sheet = np.asarray(Image.open(draw_curve(records, tmp_path / "curve.png")).convert("L"))
    labels = (sheet[:, :50] < 128).any(axis=1)  # rows with text left of the y axis
    bands = int(labels[1:].astype(int).__sub__(labels[:-1].astype(int)).clip(0).sum())
    assert bands >= 5  # five y tick labels
    assert (sheet[-34:-20, 60:] < 128).any()  # x tick labels under the axis


def test_a_line_chart_draws_each_series_in_its_colour_in_every_panel(tmp_path):
    import numpy as np
    from PIL import Image

    from flowrl.run_files import SERIES_COLOURS, line_chart

    upper = {"a": [(0, 0.5), (10, 0.6)], "b": [(0, 0.5), (10, 0.4)]}
    lower = {"a": [(0, 0.2), (10, 0.1)], "b": [(0, 0.2), (10, 0.3)]}
    pixels = np.asarray(Image.open(line_chart(tmp_path / "chart.png", "t", upper, lower)).convert("RGB"))
    half = pixels.shape[0] // 2 + 18  # the panels split below the 36-pixel title band
    for colour in SERIES_COLOURS[:2]:
        hits = (pixels == np.array(colour, dtype=np.uint8)).all(axis=2)
        assert hits[40:half].sum() > 100 and hits[half:].sum() > 100  # a line in each panel


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_device_cuda_without_a_gpu_is_refused_by_name(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="device='cuda': no CUDA device is available here"):
        train(tiny_run(tiny_dir, tmp_path / "run", "device=cuda"))


def test_a_reward_function_is_called_on_a_dummy_batch_before_any_model_loads(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'json:loads' failed on a dummy batch of 2 images \(TypeError"):
        tiny_run(tiny_dir, tmp_path / "a", "reward=json:loads")
    with pytest.raises(ValueError, match="returned 1 values for 2 images"):
        tiny_run(tiny_dir, tmp_path / "b", "reward=conftest:one_value_reward")
    tiny_run(tiny_dir, tmp_path / "c", "reward=conftest:brightness_reward")  # a sound one passes


def hub_response(status: int, url: str):
    """The HTTP answer a huggingface_hub error carries: `status` from a GET of `url`."""
    import requests

    response = requests.Response()
    response.status_code, response.url = status, url
    response.request = requests.Request("GET", response.url).prepare()
    return response


@pytest.mark.parametrize(
    "failure,message",
    [
        ("gated", "the model is gated: accept its licence at https://huggingface.co/org/model"),
        ("missing", "no model 'org/model' on the hub"),
        ("offline", r"the hub \(huggingface.co\) did not answer \(ConnectionError\)"),
    ],
)
def test_a_hub_model_that_cannot_be_read_says_why(monkeypatch, failure, message):
    import huggingface_hub
    import requests
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from flowrl.policies.loading import pipeline_class_name

    response = hub_response(401, "https://huggingface.co/api/models/org/model")
    errors = {
        "gated": GatedRepoError("gated", response=response),
        "missing": RepositoryNotFoundError("missing", response=response),
        "offline": requests.ConnectionError("no route"),
    }

    def model_info(repo_id, timeout):
        raise errors[failure]

    def load_config(source):  # what diffusers raises when it cannot get model_index.json
        raise OSError(f"{source} does not appear to have a file named model_index.json")

    from diffusers import DiffusionPipeline

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(DiffusionPipeline, "load_config", load_config)
    with pytest.raises(ValueError, match=message):
        pipeline_class_name("org/model")


def test_a_hub_policy_is_checked_before_the_run_folder_or_any_model(monkeypatch, tmp_path, capsys):
    import types

    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from flowrl.cli import main
    from flowrl.policies.loading import check_hub_policy

    def refuse_access(repo_id):  # the card is public, the files are not
        raise GatedRepoError(
            "gated", response=hub_response(403, f"https://huggingface.co/api/models/{repo_id}/auth-check")
        )

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout: types.SimpleNamespace(gated="manual"))
    monkeypatch.setattr(huggingface_hub, "auth_check", refuse_access)
    assert main(["train", "toy", "policy=org/gated-model", f"out={tmp_path / 'run'}"]) != 0
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert len(err) == 1 and "policy='org/gated-model': the model is gated" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before the folder, the policy or a reward was touched

    def no_network(*args, **kwargs):
        raise AssertionError("a cached model needs no network call")

    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: "/cache/model_index.json")
    check_hub_policy("org/cached-model")  # passes: offline runs of cached models work
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ValueError, match=r"policy='org/model': HF_HUB_OFFLINE is set and the model is not in the local cache"
    ):
        check_hub_policy("org/model")


def tree_digest(root) -> dict:
    """Every file under `root` by relative path -> its sha256 (a folder's exact content)."""
    from pathlib import Path

    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run, and the overrides that address it."""
    from conftest import tiny_model, tiny_run_overrides
    from flowrl.policies.toy import save_toy

    root = tmp_path_factory.mktemp("bad_input")
    tiny = str(save_toy(tiny_model(), root / "tiny", dtype=torch.float32))
    overrides = tiny_run_overrides(tiny, root / "run")
    from flowrl.cli import main

    assert main(["train", *overrides]) == 0  # the toy recipe with the tiny run's settings on top
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "words.txt").write_text("a purple hexagon\n")
    shutil.copytree(tiny, root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return root, overrides


def refused_without_change(root, argv: list[str], capsys, notes: bool = True) -> str:
    """Run `flowrl argv`; it must exit non-zero with one error line and no traceback, and leave
    the run folder under `root` and the shipped model byte-identical. Returns that line. `notes`:
    lines starting "note: " may come before it."""
    from flowrl.cli import main
    from flowrl.policies.toy import SHIPPED_DIR

    before, package = tree_digest(root / "run"), tree_digest(SHIPPED_DIR)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    if notes:
        err = [line for line in err if not line.startswith("note: ")]
    assert code != 0 and len(err) == 1 and "Traceback" not in err[0], err
    assert tree_digest(root / "run") == before and tree_digest(SHIPPED_DIR) == package
    return err[0]


BAD_INPUTS = [
    (["lr=nan"], "lr"),
    (["iterations=-1"], "iterations"),
    (["reward=json:loads"], "dummy batch"),
    (["reward=nosuch.module:thing"], "cannot import 'nosuch.module'"),
    (["method.group_size=1"], "group_size"),
    (["method=dance_grpo", "method.num_steps=4", "method.group_size=3"], "holds a checkpoint of a different run"),
    (["out={root}/a_file.txt"], "a_file.txt"),
    (["prompts={root}/words.txt"], "hexagon"),
    (["stall_iterations=-2"], "stall_iterations"),
    (["keep_checkpoints=0"], "keep_checkpoints"),
    (["no_such_key=1"], "no_such_key"),
    (["guidance=inf"], "guidance"),
    (["policy={root}/truncated"], "model.safetensors"),
    (["policy=org/model"], "the hub (huggingface.co) did not answer"),
    (
        [
            "reward=remote:http://127.0.0.1:{port}",
            'reward_options={{"remote:http://127.0.0.1:{port}": {{retries: 0}}}}',
        ],
        "nothing is listening there (connection refused)",
    ),
    *([] if torch.cuda.is_available() else [(["device=cuda"], "no CUDA device")]),
]


@pytest.mark.parametrize("extra,named", BAD_INPUTS, ids=[" ".join(e) for e, _ in BAD_INPUTS])
def test_a_bad_input_ends_in_one_line_and_changes_nothing(finished_run, capsys, monkeypatch, extra, named):
    import huggingface_hub
    import requests

    def unreachable(repo_id, timeout):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    root, overrides = finished_run
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = refused_without_change(root, ["train", *overrides, *(e.format(root=root, port=port) for e in extra)], capsys)
    assert named in err, err


@pytest.mark.parametrize(
    "recipe,named",
    [
        ("method: flow_grpo\niterations: [1,\n", r"bad\.yaml, line 3: "),
        ("lr: 1e-4\nseed: 1\nlr: 2e-4\n", r"bad\.yaml, line 3: the key 'lr' appears twice"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
    ids=["syntax error", "key twice", "not a mapping"],
)
def test_a_bad_recipe_file_ends_in_one_line_and_changes_nothing(finished_run, capsys, recipe, named):
    import re

    root, overrides = finished_run
    (root / "bad.yaml").write_text(recipe)
    err = refused_without_change(root, ["train", str(root / "bad.yaml"), *overrides], capsys, notes=False)
    assert re.search(named, err), err


def test_a_recipe_path_that_does_not_exist_is_named_as_a_file():
    from flowrl.cli_args import resolve_recipe

    with pytest.raises(
        ValueError, match=r"recipe file '/nowhere/r.yaml' does not exist \(shipped recipes, by name: \[.*'toy'"
    ):
        resolve_recipe("/nowhere/r.yaml")
    with pytest.raises(ValueError, match=r"recipe 'toyy' is neither a file nor a shipped recipe; shipped: \[.*'toy'"):
        resolve_recipe("toyy")
