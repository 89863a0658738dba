"""Typed stage configs: pydantic models loadable from YAML/JSON, with environment and explicit overrides.

Precedence, lowest first: field defaults < config document < environment (``MSENC_<STAGE>__<FIELD>``, read by
pydantic-settings) < explicit overrides (CLI flags, component parameters). Every validation error names the
field. Values may come as text from any layer: list fields take ``"a,b"`` (or YAML ``[a, b]``), mapping
fields YAML, and environment values are YAML (``7``, ``false``, ``null``).
"""

from __future__ import annotations

import json
import os
import types
import typing
from typing import Any, ClassVar, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_settings import EnvSettingsSource

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


def _text_kind(annotation: Any) -> tuple[str | None, bool]:
    """('list' | 'mapping' | None, allows None) for a field annotation: how a text value of it is read."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return "list", optional
    if origin is dict or annotation is dict or isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping", optional
    return None, optional


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


def _env_value(value: Any) -> Any:
    return yaml.safe_load(value) if isinstance(value, str) and value.strip() else value


class _Environment(EnvSettingsSource):
    """``MSENC_<STAGE>__<FIELD>`` variables, each value read as YAML (the text rules of the module doc)."""

    def prepare_field_value(self, field_name: str, field: Any, value: Any, value_is_complex: bool) -> Any:
        return _env_value(value)


class StageConfig(BaseModel):
    """Base of every stage config. Subclasses set ``stage`` (the environment prefix ``MSENC_<STAGE>__``) and
    may list ``renamed`` fields (old name -> new name), still accepted from every source, and ``retired`` ones,
    ignored where older documents hold them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    stage: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}
    retired: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        """Old field names -> new ones; text values of list and mapping fields parsed (module doc)."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if k not in cls.retired}
        for old, new in cls.renamed.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if not isinstance(value, str):
                continue
            kind, optional = _text_kind(field.annotation)
            text = value.strip()
            if kind == "mapping" or kind == "list" and text.startswith("["):
                try:
                    data[name] = yaml.safe_load(text)
                except yaml.YAMLError:
                    pass  # left as text: validation names the field
            elif kind == "list":
                data[name] = None if (optional and not text) else split_comma_list(value)
        return data

    @classmethod
    def env_prefix(cls) -> str:
        return f"MSENC_{cls.stage.upper().replace('-', '_')}__"

    @classmethod
    def env_overrides(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Values from ``MSENC_<STAGE>__<FIELD>`` variables (``environ``: instead of ``os.environ``)."""
        if not cls.stage:
            return {}
        environ = os.environ if environ is None else environ
        prefix = cls.env_prefix()
        source = _Environment(cls, env_prefix=prefix, case_sensitive=False)
        source.env_vars = {k.lower(): v for k, v in environ.items()}
        out = source()
        for key in environ:
            if key.upper().startswith(prefix):
                name = key[len(prefix):].lower()
                if name in cls.renamed:
                    out.setdefault(cls.renamed[name], _env_value(environ[key]))
                elif name not in cls.model_fields and name not in cls.retired:
                    raise ConfigError(f"environment variable {key}: {cls.__name__} has no field '{name}'")
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
        for old, new in cls.renamed.items():  # a document's old name must not outrank a newer layer's new name
            if old in data:
                data.setdefault(new, data.pop(old))
        env = cls.env_overrides(environ)
        if env:
            data.update(env)
            where += " + environment"
        if overrides:
            data.update({cls.renamed.get(k, k): v for k, v in overrides.items()})
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
