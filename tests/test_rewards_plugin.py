"""A user's reward from an installed package, found through the `flowrl.rewards` entry-point
group: listed by `flowrl rewards`, loaded by name, accepted by the config and used in training."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import metric_records, tiny_model
from flowrl.policies.toy import save_toy
from flowrl.rewards import registry

PLUGIN = '''
"""A plug-in reward package made by the test."""
import torch


def darkness(images, prompts):
    """One minus the mean brightness."""
    return 1 - images.mean(dim=(1, 2, 3))


class Contrast:
    """Standard deviation of the pixels, times a gain."""

    name = "contrast"

    def __init__(self, gain=1.0, device=None):
        self.gain = gain

    def score(self, images, prompts):
        return self.gain * images.flatten(1).std(dim=1)
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "flowrl-test-plugin"
version = "0.0.1"

[project.entry-points."flowrl.rewards"]
darkness = "flowrl_test_plugin:darkness"
contrast = "flowrl_test_plugin:Contrast"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plug-in package built and installed with pip into its own site directory."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    (source / "flowrl_test_plugin").mkdir(parents=True)
    (source / "flowrl_test_plugin" / "__init__.py").write_text(PLUGIN)
    (source / "pyproject.toml").write_text(PYPROJECT)
    site = root / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(p.name.startswith("flowrl_test_plugin-") and p.name.endswith(".dist-info") for p in site.iterdir())
    return site


def run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_an_installed_plugin_is_listed_and_loads_by_name(plugin_site):
    listed = run(plugin_site, "-m", "flowrl", "rewards")
    assert listed.returncode == 0, listed.stderr
    assert "darkness" in listed.stdout and "flowrl_test_plugin:darkness (package flowrl-test-plugin)" in listed.stdout
    probe = textwrap.dedent("""
        import json, torch
        from flowrl.rewards import load
        images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        dark, contrast = load("darkness"), load("contrast", gain=2.0)
        print(json.dumps({"dark": dark.score(images, ["p"] * 3).tolist(), "contrast": contrast.score(images, ["p"] * 3).tolist(),
                          "names": [dark.name, contrast.name]}))
    """)
    done = run(plugin_site, "-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert result["dark"] == pytest.approx((1 - images.mean(dim=(1, 2, 3))).tolist(), abs=1e-6)
    assert result["contrast"] == pytest.approx((2 * images.flatten(1).std(dim=1)).tolist(), abs=1e-6)
    assert result["names"] == ["darkness", "contrast"]


def test_training_uses_a_plugin_reward_by_name(plugin_site, tmp_path):
    tiny_dir = save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32)
    out = tmp_path / "run"
    done = run(
        plugin_site,
        "-m",
        "flowrl",
        "train",
        f"policy={tiny_dir}",
        f"out={out}",
        "iterations=1",
        "prompts_per_iteration=2",
        "method=flow_grpo",
        "method.num_steps=2",
        "method.group_size=2",
        "eval_every=0",
        "threads=1",
        "reward=0.5*darkness+contrast",
        "reward_options={contrast: {gain: 3.0}}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = metric_records(out)[-1]
    assert record["reward/mean"] == pytest.approx(
        0.5 * record["reward/darkness/mean"] + record["reward/contrast/mean"], rel=1e-5
    )
    assert 0 < record["reward/darkness/mean"] < 1


def test_without_the_plugin_the_name_is_unknown(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flowrl", "train", f"out={tmp_path}", "reward=darkness"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "config key reward='darkness': unknown reward 'darkness'; known:" in done.stderr


def test_a_module_in_the_current_folder_is_found_by_the_console_script(tmp_path):
    script = Path(sys.executable).with_name("flowrl")
    if not script.is_file():
        pytest.skip("the flowrl console script is not installed in this environment")
    (tmp_path / "my_reward.py").write_text("def brightness(images, prompts):\n    return images.mean(dim=(1, 2, 3))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "train", "toy", "reward=my_reward:brightness", "--help-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "my_reward:brightness" in done.stdout


def test_a_module_that_cannot_be_imported_says_where_it_must_be():
    with pytest.raises(
        ValueError, match=r"cannot import 'no_such_reward_module'.*current folder, a folder on PYTHONPATH"
    ):
        registry.check("no_such_reward_module:score")
