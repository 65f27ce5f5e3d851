"""MineConfig: every option checked once, when the config is made (from Python or the command line); bad options
are one line with exit status 2 through the command, before anything is written."""

from __future__ import annotations

import argparse
import json

import pytest
from mine_helpers import mine
from test_command_checks import assert_nothing_written, assert_one_line_error

from styleda_fast.mining import DEFAULT_CLASS_TEMPLATE, MineConfig, MineError
from styleda_fast.mining.command import add_arguments
from styleda_fast.mining.config import compose_class_prompt, read_class_prompts, template_fields


def zero_shot(**kwargs) -> MineConfig:
    return MineConfig(images="i", out="o", mode="patch", labels="l", prompt="driving at night", **kwargs)


def test_the_command_line_and_python_make_the_same_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--images", "i", "--out", "o", "--mode", "patch", "--labels", "l", "--prompt",
                              "driving at night", "--text-noise", "0.1", "--text-noise-draws", "3"])  # fmt: skip
    assert MineConfig.from_namespace(args) == zero_shot(text_noise=0.1, text_noise_draws=3)
    config = zero_shot()
    assert config.zero_shot and config.template == DEFAULT_CLASS_TEMPLATE == "{class} while {domain}"
    assert config.prompt_lists["road"] == ("road while driving at night",)
    with pytest.raises(AttributeError):
        config.steps = 3  # frozen: checked once, never changed after


def test_class_template_placeholders():
    assert template_fields("a {class} seen {domain}") == ["class", "domain"]
    assert compose_class_prompt("{domain}: {class}", "traffic light", "snow") == "snow: traffic light"
    assert zero_shot(class_template="{domain}, a {class}").prompt_lists["sky"] == ("driving at night, a sky",)
    for template, needle in [("{class} in {weather}", "{weather}"), ("{} at night", "{}"), ("{0}", "{0}"),
                             ("{class!r}", "placeholders"), ("{class", "brace"), ("", "empty")]:  # fmt: skip
        with pytest.raises(MineError, match="class-template") as info:
            zero_shot(class_template=template)
        assert needle in str(info.value)


def test_class_prompts_from_a_file_or_a_mapping(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"road": "a wet road at night", "sky": ["a black sky", "a starry sky"]}))
    config = zero_shot(class_prompts=str(path))
    assert config.class_prompts == {"road": ("a wet road at night",), "sky": ("a black sky", "a starry sky")}
    assert config.prompt_lists["sky"] == ("a black sky", "a starry sky")
    assert config.prompt_lists["car"] == ("car while driving at night",)
    assert zero_shot(class_prompts={"road": "a wet road"}).prompt_lists["road"] == ("a wet road",)
    bad = tmp_path / "bad.json"
    for content, needles in [("{not json", ["not JSON"]), ('["road"]', ["JSON object"]),
                             ('{"raod": "x", "cars": "y", "road": "z"}', ["'raod'", "'cars'", "road, sidewalk"]),
                             ('{"road": []}', ["'road'"]), ('{"road": 3}', ["'road'"])]:  # fmt: skip
        bad.write_text(content)
        with pytest.raises(MineError) as info:
            zero_shot(class_prompts=str(bad))
        assert all(needle in str(info.value) for needle in needles), info.value
    with pytest.raises(MineError, match="no such file"):
        read_class_prompts(tmp_path / "missing.json")


def test_mode_and_number_errors():
    base = dict(images="i", out="o")
    for kwargs, needle in [
        (dict(prompt="x", class_styles=True, mode="patch", labels="l"), "not both"),
        (dict(), "--prompt TEXT"),
        (dict(prompt="x", class_template="{class}"), "--class-template is for --mode patch with --prompt"),
        (dict(class_styles=True, mode="patch", labels="l", class_prompts={"road": "x"}), "--class-prompts is for"),
        (dict(prompt="x", text_noise=-0.1), "--text-noise must be a finite number >= 0"),
        (dict(prompt="x", text_noise=float("nan")), "--text-noise"),
        (dict(prompt="x", text_noise_draws=0), "--text-noise-draws must be in [1, 4096]"),
        (dict(prompt="x", text_noise_draws=2), "--text-noise-draws needs --text-noise"),
        (dict(prompt="x", threads=0), "--threads"),
        (dict(prompt="x", steps=True), "--steps must be an integer"),
        (dict(prompt="x", feature_noise=-1.0), "--feature-noise"),
    ]:
        with pytest.raises(MineError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            MineConfig(**base, **kwargs)


def test_bad_study_options_are_one_line_and_write_nothing(dataset, tmp_path):
    """Issue 20: each bad option of the study modes through the real command: exit status 2, one line naming it,
    nothing next to the output."""
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    zero = ["--images", str(images), "--labels", str(labels), "--mode", "patch", "--prompt", "driving at night",
            "--grid", "2", "--out", str(out)]  # fmt: skip
    not_json = tmp_path / "p.json"
    not_json.write_text("road: a road")
    unknown = tmp_path / "q.json"
    unknown.write_text('{"roads": "a road", "car": "a car"}')
    for extra, needles in [
        (["--class-template", "{class} in {weather}"], ["--class-template", "{weather}"]),
        (["--class-prompts", str(not_json)], ["--class-prompts", "not JSON"]),
        (["--class-prompts", str(unknown)], ["--class-prompts", "'roads'"]),
        (["--text-noise", "-0.5"], ["--text-noise must be a finite number >= 0, got -0.5"]),
        (["--class-styles"], ["--prompt", "--class-styles", "not both"]),
    ]:
        assert_one_line_error(mine(*zero, *extra, check=False), *needles)
        assert_nothing_written(tmp_path, out)
