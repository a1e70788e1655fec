"""modcamd's configuration file and its error classes: defaults, overrides,
every kind of bad input as one sentence, and exactly the documented D-Bus
error names."""
import re
from pathlib import Path

import pytest

from modcam import config, errors, names
from modcam.config import Config, ConfigError


def write(tmp_path, text):
    path = tmp_path / "modcamd.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_documented_ones(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert config.load() == Config()
    documented = dict(re.findall(r"^    (\w+) = (\S+)", config.__doc__, re.M))
    assert sorted(documented) == sorted(f for f in Config.__dataclass_fields__)
    for key, text in documented.items():
        default = getattr(Config, key)
        assert type(default)(text.strip('"')) == default, key


def test_file_values_then_command_line_overrides(tmp_path):
    path = write(tmp_path, 'idle_timeout = 5\nbus = "session"\nlog_level = "DEBUG"\n'
                           'capture_dir = "/srv/pictures"\n')
    c = config.load(path, {"idle_timeout": 7.5, "bus": None})
    assert c == Config(idle_timeout=7.5, bus="session", log_level="debug",
                       capture_dir=Path("/srv/pictures"))


@pytest.mark.parametrize("text, message", [
    ("idle_timout = 5", "unknown key 'idle_timout'"),
    ("idle_timeout = 0", "idle_timeout = 0 is outside 1..86400 s"),
    ('idle_timeout = "30"', "idle_timeout must be a number of seconds"),
    ("idle_timeout = true", "idle_timeout must be a number of seconds"),
    ("boot_timeout = nan", "boot_timeout must be a number of seconds"),
    ('capture_dir = "captures"', "capture_dir must be an absolute path"),
    ('bus = "systen"', "bus must be 'system', 'session' or a D-Bus address"),
    ('log_level = "loud"', "log_level must be one of debug, info, warning, error"),
    ("idle_timeout = ", "is not valid TOML"),
])
def test_bad_files_stop_with_one_sentence_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_missing_named_file_and_bad_override_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="command line: idle_timeout"):
        config.load(write(tmp_path, ""), {"idle_timeout": -1})


def test_error_classes_carry_exactly_the_documented_names():
    classes = [errors.NotReady, errors.Removed, errors.Busy, errors.InvalidArgument,
               errors.PermissionDenied, errors.Timeout, errors.Failed]
    assert sorted(c.dbus_suffix for c in classes) == sorted(names.ERRORS)
    for cls in classes:
        name, message = errors.dbus_error(cls("module MC1 is booting"))
        assert name == names.ERROR_PREFIX + cls.__name__ and message == "module MC1 is booting"


def test_unexpected_exceptions_become_failed_without_internals():
    name, message = errors.dbus_error(KeyError("slot_table"))
    assert name == names.ERROR_PREFIX + "Failed"
    assert "slot_table" not in message and "Traceback" not in message
    name, message = errors.dbus_error(OSError(28, "No space left on device"))
    assert name == names.ERROR_PREFIX + "Failed" and "no space left on device" in message
