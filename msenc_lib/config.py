"""Typed stage configs: pydantic models loadable from YAML/JSON, with env and explicit overrides.

Precedence, lowest first: field defaults < config document < environment (``MSENC_<STAGE>__<FIELD>``)
< explicit overrides (CLI flags, component parameters). Every validation error names the field.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from msenc_lib.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


def _describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  field '{field}': {e['msg']}{got_txt}")
    return "\n".join(lines)


def parse_document(text: str, source: str = "<text>") -> dict[str, Any]:
    """Parse a YAML or JSON mapping (JSON is YAML); an empty document is an empty mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config document must be a mapping, got {type(data).__name__}")
    return data


class StageConfig(BaseModel):
    """Base of every stage config. Subclasses set ``stage`` (used for env overrides)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    stage: ClassVar[str] = ""

    @classmethod
    def env_overrides(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Values from ``MSENC_<STAGE>__<FIELD>`` variables; each value is parsed as YAML."""
        if not cls.stage:
            return {}
        environ = os.environ if environ is None else environ
        prefix = f"MSENC_{cls.stage.upper().replace('-', '_')}__"
        out: dict[str, Any] = {}
        for key, raw in environ.items():
            if key.startswith(prefix):
                name = key[len(prefix):].lower()
                if name not in cls.model_fields:
                    raise ConfigError(f"environment variable {key}: {cls.__name__} has no field '{name}'")
                out[name] = yaml.safe_load(raw) if raw.strip() else raw
        return out

    @classmethod
    def load(
        cls: type[C],
        source: str | os.PathLike | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> C:
        """Build a config from a document (path/URI or mapping), env overrides and explicit overrides."""
        data: dict[str, Any] = {}
        where = "defaults"
        if isinstance(source, Mapping):
            data.update(source)
            where = "mapping"
        elif source is not None:
            from msenc_lib import storage

            where = str(source)
            try:
                text = storage.read_text(where)
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {where}") from None
            data.update(parse_document(text, where))
        env = cls.env_overrides(environ)
        if env:
            data.update(env)
            where += " + environment"
        if overrides:
            data.update({k: v for k, v in overrides.items()})
            where += " + overrides"
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_describe_errors(e, where)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def save(self, uri: str | os.PathLike) -> None:
        """Write the config as YAML (or JSON if the name ends in .json), atomically."""
        from msenc_lib import storage

        text = self.model_dump_json(indent=2) if str(uri).endswith(".json") else self.to_yaml()
        storage.write_text(str(uri), text)

