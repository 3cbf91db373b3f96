"""Ready-made provider descriptors for well-known OAuth 2.0 providers.

The presets are data: ``presets.toml`` (shipped in the package) holds one table per provider,
and :func:`load_presets` turns each table into a function returning a validated
:class:`ProviderDescriptor` that carries the provider's quirks (see ``docs/providers.md``).
The functions are attributes of this module (``presets.github()``, ``presets.microsoft(
tenant="contoso.onmicrosoft.com")``) and entries of :data:`PRESETS`; :func:`preset` finds one
by name or alias. Keyword ``overrides`` replace any descriptor field, e.g.
``github(id="github-enterprise", client_auth_method="client_secret_basic")``. Presets whose
endpoints depend on a tenant, shop, domain or region take it as an argument; leave it out to
get a templated descriptor and fill it later with :meth:`ProviderDescriptor.with_template`.

Your own presets file, in the same format, loads with ``load_presets(path)``.
"""

from __future__ import annotations

import importlib.resources
import inspect
import tomllib
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from typing import Literal

from ._core.errors import ConfigurationError
from ._core.provider import ProviderDescriptor

__all__ = ["PRESETS", "PresetDataError", "PresetFactory", "UnknownPreset", "load_presets", "preset"]

PresetFactory = Callable[..., ProviderDescriptor]
"""A preset: call it with its arguments and descriptor-field overrides."""


class PresetDataError(ConfigurationError):
    """A presets file is malformed: names the file, the preset and the offending key."""


class UnknownPreset(ConfigurationError, LookupError):
    """:func:`preset` was asked for a name that is neither a preset nor an alias."""


_META_KEYS = frozenset({"doc", "aliases", "args", "when"})
_ARG_KEYS = frozenset({"default", "kind", "choices", "strip_suffix", "plain"})
_WHEN_KEYS = frozenset({"arg", "truthy", "not_in"})
_KINDS = ("template", "text", "flag")
_FIELDS = frozenset(ProviderDescriptor.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class _Arg:
    name: str
    default: object
    kind: Literal["template", "text", "flag"]
    choices: tuple[str, ...] | None
    strip_suffix: str | None
    plain: bool

    def check(self, preset_label: str, value: object) -> object:
        """The argument's value after the declared checks and clean-ups."""
        if value is None or self.kind == "flag":
            return value
        if not isinstance(value, str):
            raise ConfigurationError(f"{self.name} must be a string; got {type(value).__name__}")
        if self.strip_suffix and value.endswith(self.strip_suffix):
            value = value[: -len(self.strip_suffix)]
        if self.choices is not None and value not in self.choices:
            raise ConfigurationError(
                f"unknown {preset_label} {self.name} {value[:60]!r}; "
                f"one of: {', '.join(self.choices)}"
            )
        if self.plain and any(c in value for c in "/?#{}"):
            raise ConfigurationError(
                f"{self.name} must be a plain identifier (no / ? # {{ }}); got {value[:60]!r}"
            )
        return value


@dataclass(frozen=True, slots=True)
class _When:
    arg: str
    truthy: bool | None
    not_in: tuple[str, ...] | None
    fields: Mapping[str, Any]

    def applies(self, values: Mapping[str, object]) -> bool:
        value = values[self.arg]
        if self.not_in is not None:
            return value not in self.not_in
        return bool(value) is self.truthy


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    doc: str
    aliases: tuple[str, ...]
    fields: Mapping[str, Any]
    args: tuple[_Arg, ...]
    when: tuple[_When, ...]

    def build(
        self, values: Mapping[str, object], overrides: Mapping[str, Any]
    ) -> ProviderDescriptor:
        label = str(self.fields.get("display_name") or self.name)
        checked = {a.name: a.check(label, values[a.name]) for a in self.args}
        fields = dict(self.fields)
        for rule in self.when:
            if rule.applies(checked):
                fields.update(rule.fields)
        texts = {
            "{" + a.name + "}": str(checked[a.name])
            for a in self.args
            if a.kind == "text" and checked[a.name] is not None
        }
        if texts:
            fields = {k: _substitute(v, texts) for k, v in fields.items()}
        descriptor = ProviderDescriptor.from_dict({**fields, **overrides})
        template = {
            a.name: str(checked[a.name])
            for a in self.args
            if a.kind == "template" and checked[a.name] is not None
        }
        return descriptor.with_template(**template) if template else descriptor


def _substitute(value: Any, texts: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for placeholder, text in texts.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, list | tuple):
        return [_substitute(v, texts) for v in value]
    if isinstance(value, Mapping):
        return {k: _substitute(v, texts) for k, v in value.items()}
    return value


def _factory(spec: _Spec) -> PresetFactory:
    params = [
        inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=a.default)
        for a in spec.args
    ]
    params.append(inspect.Parameter("overrides", inspect.Parameter.VAR_KEYWORD))
    signature = inspect.Signature(params, return_annotation=ProviderDescriptor)

    def factory(*args: Any, **kwargs: Any) -> ProviderDescriptor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        overrides: dict[str, Any] = bound.arguments.pop("overrides", {})
        return spec.build(bound.arguments, overrides)

    factory.__name__ = factory.__qualname__ = spec.name
    factory.__module__ = __name__
    factory.__doc__ = spec.doc
    factory.__signature__ = signature  # type: ignore[attr-defined]
    return factory


class _Reader:
    """Validates one presets document, naming the file, preset and key of every problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> PresetDataError:
        return PresetDataError(f"{self.source}: {where}: {problem}; fix the presets file")

    def strings(self, where: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "must be a list of strings")
        return tuple(value)

    def fields(self, where: str, table: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
        fields = {k: v for k, v in table.items() if k not in skip}
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise self.fail(where, f"unknown descriptor fields {', '.join(unknown)}")
        return fields

    def arg(self, where: str, name: str, table: object) -> _Arg:
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(table) - _ARG_KEYS)
        if unknown:
            raise self.fail(
                where, f"unknown keys {', '.join(unknown)} (allowed: {sorted(_ARG_KEYS)})"
            )
        kind = table.get("kind", "template")
        if kind not in _KINDS:
            raise self.fail(f"{where}.kind", f"must be one of {', '.join(_KINDS)}; got {kind!r}")
        default = table.get("default")
        if kind == "flag" and not isinstance(default, bool):
            raise self.fail(f"{where}.default", "a flag needs a true or false default")
        if kind != "flag" and default is not None and not isinstance(default, str):
            raise self.fail(f"{where}.default", "must be a string")
        choices = table.get("choices")
        suffix = table.get("strip_suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise self.fail(f"{where}.strip_suffix", "must be a string")
        plain = table.get("plain", False)
        if not isinstance(plain, bool):
            raise self.fail(f"{where}.plain", "must be true or false")
        return _Arg(
            name=name,
            default=default,
            kind=kind,
            choices=None if choices is None else self.strings(f"{where}.choices", choices),
            strip_suffix=suffix,
            plain=plain,
        )

    def when(self, where: str, table: object, args: Mapping[str, _Arg]) -> _When:
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        arg = table.get("arg")
        if arg not in args:
            raise self.fail(f"{where}.arg", f"must name one of the preset's args; got {arg!r}")
        truthy = table.get("truthy")
        not_in = table.get("not_in")
        if (truthy is None) == (not_in is None) or not isinstance(truthy, bool | None):
            raise self.fail(where, "needs exactly one of truthy = true|false or not_in = [...]")
        return _When(
            arg=str(arg),
            truthy=truthy,
            not_in=None if not_in is None else self.strings(f"{where}.not_in", not_in),
            fields=self.fields(where, table, _WHEN_KEYS),
        )

    def spec(self, name: str, table: object) -> _Spec:
        if not isinstance(table, dict):
            raise self.fail(name, "must be a table")
        doc = table.get("doc", "")
        if not isinstance(doc, str):
            raise self.fail(f"{name}.doc", "must be a string")
        raw_args = table.get("args", {})
        if not isinstance(raw_args, dict):
            raise self.fail(f"{name}.args", "must be a table of tables")
        args = {k: self.arg(f"{name}.args.{k}", k, v) for k, v in raw_args.items()}
        if "overrides" in args:
            raise self.fail(f"{name}.args", "'overrides' is reserved")
        raw_when = table.get("when", [])
        if not isinstance(raw_when, list):
            raise self.fail(f"{name}.when", "must be an array of tables ([[NAME.when]])")
        fields = {"id": name, **self.fields(name, table, _META_KEYS)}
        return _Spec(
            name=name,
            doc=doc.strip(),
            aliases=self.strings(f"{name}.aliases", table.get("aliases", [])),
            fields=MappingProxyType(fields),
            args=tuple(args.values()),
            when=tuple(self.when(f"{name}.when[{i}]", w, args) for i, w in enumerate(raw_when)),
        )


def _read(source: str | Path | None) -> tuple[str, str]:
    if source is None:
        resource = importlib.resources.files(__package__).joinpath("presets.toml")
        return "oauth2_broker_mw/presets.toml", resource.read_text(encoding="utf-8")
    path = Path(source)
    try:
        return str(path), path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetDataError(f"cannot read presets file {str(path)!r}: {exc}") from None


def _load(source: str | Path | None) -> tuple[dict[str, PresetFactory], dict[str, str]]:
    label, text = _read(source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetDataError(f"{label} is not valid TOML: {exc}") from None
    reader = _Reader(label)
    factories: dict[str, PresetFactory] = {}
    aliases: dict[str, str] = {}
    for name, table in document.items():
        spec = reader.spec(name, table)
        factory = _factory(spec)
        try:
            factory()
        except ConfigurationError as exc:
            raise reader.fail(name, str(exc)) from None
        factories[name] = factory
        for alias in spec.aliases:
            if alias in document or aliases.setdefault(alias, name) != name:
                raise reader.fail(f"{name}.aliases", f"{alias!r} already names another preset")
    return dict(sorted(factories.items())), aliases


def load_presets(source: str | Path | None = None) -> Mapping[str, PresetFactory]:
    """The presets defined in a TOML file (by default the packaged ``presets.toml``).

    Returns a read-only mapping of preset name to factory function. Every preset is built once
    with its default arguments, so bad data fails here, as :class:`PresetDataError` naming the
    file, the preset and the key, rather than when the preset is first used.
    """
    return MappingProxyType(_load(source)[0])


_factories, _alias_names = _load(None)
PRESETS: Mapping[str, PresetFactory] = MappingProxyType(_factories)
"""Every packaged preset by name."""
_ALIASES: Mapping[str, str] = MappingProxyType(_alias_names)
__all__ += sorted(PRESETS)


def preset(name: str, **kwargs: Any) -> ProviderDescriptor:
    """The preset called ``name`` (case-insensitive; ``twitter``, ``entra``... are aliases)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    factory = PRESETS.get(key)
    if factory is None:
        raise UnknownPreset(f"no preset named {name!r}; available: {', '.join(sorted(PRESETS))}")
    return factory(**kwargs)


def __getattr__(name: str) -> PresetFactory:
    try:
        return PRESETS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *PRESETS})
