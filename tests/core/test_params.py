"""params.yaml against the settings classes: every group loads, every key is known, and the default
each comment documents ("(default X)") is the class's default: defaults live in one place."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pipeline.caption.config import CaptionConfig
from pipeline.core.config import ParamsError, load_settings
from pipeline.core.engine import EngineConfig, RayConfig
from pipeline.curate.filter.config import FilterConfig
from pipeline.curate.probe.config import ProbeConfig
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.split.config import SplitConfig
from pipeline.encode.config import EncodeConfig
from pipeline.models.config import ModelConfig
from pipeline.report.report import ReportConfig
from pipeline.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
GROUPS = {"probe": ProbeConfig, "split": SplitConfig, "score": ScoreConfig, "filter": FilterConfig,
          "caption": CaptionConfig, "model": ModelConfig, "encode": EncodeConfig, "train": TrainConfig,
          "report": ReportConfig, "ray": RayConfig}
DEFAULT = re.compile(r"\(default (.*)\)\s*$")


def _documented_defaults() -> dict[tuple[str, ...], str]:
    """(group, key[, subkey]) -> the text after "(default " in the line's comment."""
    out, stack = {}, []
    for line in (REPO / "params.yaml").read_text().splitlines():
        m = re.match(r"^( *)([A-Za-z_]+):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        if "#" in line and (d := DEFAULT.search(line.split("#", 1)[1])):
            out[tuple(stack)] = d.group(1).strip()
    return out


def _default(cls, path: tuple[str, ...]):
    obj = cls()
    for part in path:
        obj = getattr(obj, part)
    return obj


def test_every_group_of_params_yaml_loads_into_its_settings_class():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(params) == set(GROUPS) | {"engine"}  # engine: one value, not a group
    for group, cls in GROUPS.items():
        load_settings(cls, {k: v for k, v in (params[group] or {}).items() if v is not None or group != "train"}, group)
    assert EngineConfig.from_params(params) == EngineConfig()  # the defaults: engine local, ray's defaults
    assert re.search(r"^engine: local .*\(default local\)$", (REPO / "params.yaml").read_text(), re.M)


def _readings(text: str) -> list:
    """What a documented default may mean: the whole text or the part before a comment on it
    ("1.0, = split.min_s" -> 1.0; "4096: 64x64 for the tiny demo" -> 4096)."""
    out = []
    for cut in (None, "): ", ", ", "; ", ": ", " = ", " ("):
        part = text if cut is None else text.split(cut, 1)[0]
        try:
            value = yaml.safe_load(part)
        except yaml.YAMLError:
            continue
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out.append(value)
    return out


def _same(want, have) -> bool:
    have = list(have) if isinstance(have, tuple) else have
    if want in ("none", None, []) and have in (None, [], {}, ""):
        return True
    if isinstance(have, float) and isinstance(want, (int, float)) and not isinstance(want, bool):
        return float(want) == have
    return want == have


def test_the_documented_defaults_are_the_code_defaults():
    documented = _documented_defaults()
    assert len(documented) > 80
    wrong = []
    for (group, *path), text in documented.items():
        if group not in GROUPS or not path or path[0] == "detectors":
            continue
        have = _default(GROUPS[group], tuple(path))
        if not any(_same(w, have) for w in _readings(text)):
            wrong.append(f"{group}.{'.'.join(path)}: params.yaml says default {text!r}, the code has {have!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("group, key, value, match", [
    ("split", "detector", "bogus", "split.detector: 'bogus' is not allowed: must be one of adaptive"),
    ("split", "codec", "bogus264", "split.codec: 'bogus264' is not allowed: a video encoder of PyAV's FFmpeg"),
    ("split", "max_s", 0.5, "split.max_s: 0.5 is not allowed: must be 0 .* >= split.min_s"),
    ("split", "trim_frames", -1, "split.trim_frames: -1 is not allowed: must be >= 0"),
    ("score", "short_side", 0, "score.short_side: 0 is not allowed: must be >= 16"),
    ("encode", "target_fps", -4, "encode.target_fps: -4 is not allowed"),
    ("filter", "max_aspect", -1, "filter.max_aspect: -1 is not allowed: must be > 0"),
    ("caption", "max_frames", -2, "caption.max_frames: -2 is not allowed: must be >= 1"),
    ("caption", "backend", "vllm", "caption.backend: 'vllm' is not allowed: must be one of transformers, openai"),
    ("encode", "frame_buckets", [16, 32], "encode.frame_buckets"),
    ("model", "profile", "wan3", "model.profile: 'wan3' is not allowed"),
    ("report", "bins", "many", "report.bins: 'many' is not allowed: must be a whole number"),
    ("score", "short_sid", 3, "score.short_sid: unknown key .known: short_side"),
    ("ray", "actors", 0, "ray.actors: 0 is not allowed: must be >= 1"),
])
def test_a_bad_value_is_one_line_naming_the_key_the_value_and_what_is_allowed(group, key, value, match):
    with pytest.raises(ParamsError, match=match) as e:
        load_settings(GROUPS[group], {key: value}, group)
    assert "\n" not in str(e.value)


def test_settings_classes_are_plain_dataclasses():
    for cls in GROUPS.values():
        assert dataclasses.is_dataclass(cls)


def test_a_broken_params_file_is_a_one_line_params_error(tmp_path):
    from pipeline.core.params import load_params

    broken = tmp_path / "params.yaml"
    broken.write_text("split:\n  max_s: 6\nscore: [\n")
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(broken))}: not valid YAML: .* \(line \d+, column \d+\)$"):
        load_params(None, broken)
    broken.write_text("- a list\n- not groups\n")
    with pytest.raises(ParamsError, match="expected a mapping of params groups, got list"):
        load_params(None, broken)
    broken.write_text("")
    assert load_params(None, broken) == {}


def test_engine_is_local_or_ray():
    assert EngineConfig.from_params({"engine": "ray", "ray": {"address": "auto"}}).ray.address == "auto"
    with pytest.raises(ParamsError, match="^params.yaml engine: 'spark' is not allowed: must be one of local, ray$"):
        EngineConfig.from_params({"engine": "spark"})
