"""Presets are data: the packaged TOML, the loader's errors, and the idle-limit field."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from oauth2_broker_mw import presets
from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.presets import PresetDataError
from oauth2_broker_mw.presets import UnknownPreset
from oauth2_broker_mw.presets import load_presets

GOOD = """
[acme]
doc = "Acme."
display_name = "Acme"
authorization_endpoint = "https://{host}/authorize"
token_endpoint = "https://{host}/token"
aliases = ["acme-corp"]

[acme.args.host]
default = "login.acme.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_preset_is_a_module_function_with_its_arguments_and_doc() -> None:
    for name, factory in presets.PRESETS.items():
        assert getattr(presets, name) is factory
        assert name in presets.__all__ and name in dir(presets)
        assert factory.__name__ == name and factory.__doc__
    assert list(inspect.signature(presets.okta).parameters) == [
        "domain",
        "authorization_server",
        "overrides",
    ]
    # positional arguments bind like the hand-written functions did
    assert presets.microsoft("contoso.onmicrosoft.com").issuer == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = presets.nope


def test_unknown_preset_is_a_typed_broker_error() -> None:
    with pytest.raises(UnknownPreset, match="no preset named 'gihtub'; available: asana") as info:
        presets.preset("gihtub")
    assert isinstance(info.value, ConfigurationError | BrokerError)


def test_a_user_presets_file_loads_with_aliases_and_templates(tmp_path: Path) -> None:
    loaded = load_presets(write(tmp_path, GOOD))
    assert list(loaded) == ["acme"]
    assert loaded["acme"]().token_endpoint == "https://login.acme.example/token"
    assert loaded["acme"](host=None).template_fields == {"host"}
    assert loaded["acme"]("sso.acme.example", default_scopes=["x"]).default_scopes == ("x",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[acme\n", "is not valid TOML"),
        ('acme = "x"', "acme: must be a table"),
        (
            GOOD.replace("aliases", 'scope_delimeter = ","\naliases'),
            "acme: unknown descriptor fields scope_delimeter",
        ),
        (
            GOOD.replace('default = "login', 'kind = "loud"\ndefault = "login'),
            "acme.args.host.kind",
        ),
        (GOOD + '[acme.args.flag]\nkind = "flag"\n', "a flag needs a true or false default"),
        (GOOD + '[[acme.when]]\narg = "nope"\ntruthy = true\n', r"acme\.when\[0\]\.arg"),
        (GOOD + '[[acme.when]]\narg = "host"\n', "needs exactly one of truthy"),
        (GOOD + '[[acme.when]]\narg = "host"\ntruthy = true\nbogus = 1\n', "unknown descriptor"),
        (GOOD.replace("https://{host}/token", "ftp://{host}/token"), "acme: token_endpoint"),
        (
            GOOD
            + '[other]\ntoken_endpoint = "https://o.example/t"\ngrants = ["client_credentials"]'
            '\naliases = ["acme-corp"]\n',
            "'acme-corp' already names another preset",
        ),
        (
            GOOD.replace("aliases", "refresh_idle_limit = -1\naliases"),
            "refresh_idle_limit must be > 0",
        ),
    ],
)
def test_bad_presets_data_names_the_file_preset_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PresetDataError, match=message) as info:
        load_presets(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, BrokerError)


def test_missing_presets_file_is_a_preset_data_error(tmp_path: Path) -> None:
    with pytest.raises(PresetDataError, match="cannot read presets file"):
        load_presets(tmp_path / "absent.toml")


def test_refresh_idle_limit_is_set_where_the_provider_has_one() -> None:
    day = 86400.0
    assert presets.google().refresh_idle_limit == 180 * day
    assert presets.xero().refresh_idle_limit == 60 * day
    assert presets.microsoft().refresh_idle_limit == 90 * day
    assert presets.zendesk(subdomain="acme").refresh_idle_limit == 30 * day
    assert presets.quickbooks().refresh_idle_limit == 100 * day
    assert presets.github().refresh_idle_limit is None
    assert presets.google(refresh_idle_limit=7 * day).refresh_idle_limit == 7 * day  # testing mode
    restored = ProviderDescriptor.from_dict(presets.xero().to_dict())
    assert restored.refresh_idle_limit == 60 * day
    with pytest.raises(ConfigurationError, match="refresh_idle_limit must be a number"):
        ProviderDescriptor.from_dict({**presets.xero().to_dict(), "refresh_idle_limit": "soon"})
