"""Reading the project's YAML files with errors that name the file and the field."""
from pathlib import Path

import yaml


class ConfigError(Exception):
    """A YAML file of the project is malformed; the message names the file and the field."""

    def __init__(self, path, field, message):
        super().__init__(f"{path}: {field}: {message}" if field else f"{path}: {message}")
        self.path = Path(path)
        self.field = field


def load_yaml(path):
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(path, "", f"not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the top level must be a mapping")
    return data


class Fields:
    """Typed access to one mapping of a YAML file: every complaint carries its dotted field name."""

    def __init__(self, path, data, prefix=""):
        self.path, self.data, self.prefix = path, data, prefix

    def name(self, key):
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key, message):
        return ConfigError(self.path, self.name(key), message)

    def get(self, key, kind, default=None, required=False):
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        # bool is an int in Python; a YAML `yes` must not pass for a count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"must be a {wanted}, not {type(value).__name__} {value!r}")
        return value

    def positive(self, key, default=None, required=False):
        value = self.get(key, (int, float), default, required)
        if value is not None and value <= 0:
            raise self.error(key, f"must be positive, not {value}")
        return value

    def child(self, key, required=False):
        value = self.get(key, dict, {} if not required else None, required)
        return Fields(self.path, value, self.name(key))

    def strings(self, key, default=None, required=False):
        value = self.get(key, list, default, required)
        if value is not None and not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        return value

    def only(self, *allowed):
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise ConfigError(
                self.path, self.name(unknown[0]), f"unknown field (expected one of: {', '.join(allowed)})"
            )
