"""Typed stage configs: pydantic models loadable from YAML/JSON, with env and explicit overrides.

Precedence, lowest first: field defaults < config document < environment (``MSENC_<STAGE>__<FIELD>``)
< explicit overrides (CLI flags, component parameters). Every validation error names the field.
"""

from __future__ import annotations

import json
import os
import types
import typing
from typing import Any, ClassVar, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

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


def _list_field(annotation: Any) -> tuple[bool, bool]:
    """(is a list field, allows None) for a field annotation."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    return typing.get_origin(annotation) in (list, tuple, set) or annotation in (list, tuple, set), optional


def split_comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: how CLI flags, env vars and KFP parameters spell lists."""
    return [part.strip() for part in text.split(",") if part.strip()]


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

    @model_validator(mode="before")
    @classmethod
    def _lists_from_strings(cls, data: Any) -> Any:
        """List fields also accept a comma-separated string; "" means empty (or None where allowed)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if isinstance(value, str):
                is_list, optional = _list_field(field.annotation)
                if is_list:
                    data[name] = None if (optional and not value.strip()) else split_comma_list(value)
        return data

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

