"""The explicit list of provider types; each module is imported on first use.

``read_settings`` validates a ``providers.<name>`` section into the type's frozen settings
without building anything; ``build_provider`` needs those settings (or the raw section)
and the daemon's HTTP client.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import ConfigError, ConfigErrors
from bridge.providers.base import POLICY_KEYS, Provider
from bridge.settings import read

#: type name -> "module:Class"
PROVIDER_TYPES: dict[str, str] = {
    "file": "bridge.providers.file:FileProvider",
    "smspartner": "bridge.providers.smspartner:SmsPartnerProvider",
    "allmysms": "bridge.providers.allmysms:AllmysmsProvider",
    "allo": "bridge.providers.allo:AlloProvider",
    "orange": "bridge.providers.orange:OrangeProvider",
    "octopush": "bridge.providers.octopush:OctopushProvider",
    "ovh": "bridge.providers.ovh:OvhProvider",
    "twilio": "bridge.providers.twilio:TwilioProvider",
    "vonage": "bridge.providers.vonage:VonageProvider",
    "http": "bridge.providers.http:HttpProvider",
}


def provider_class(type_name: Any, path: str = "type") -> type:
    """The class registered for ``type_name``; ``ConfigError`` at ``path`` if unknown."""
    target = PROVIDER_TYPES.get(type_name) if isinstance(type_name, str) else None
    if target is None:
        if not isinstance(type_name, str):
            raise ConfigError(path, "required (a provider type name)")
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ConfigError(path, f"unknown provider type {type_name!r} (known: {known})")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def read_settings(name: str, section: Mapping[str, Any], errors: list[ConfigError]) -> Any:
    """The typed settings of ``providers.<name>``; problems are appended to ``errors``."""
    try:
        cls = provider_class(section.get("type"), f"providers.{name}.type")
    except ConfigError as exc:
        errors.append(exc)
        return None
    return read(cls.Settings, section, f"providers.{name}", errors, ignore=POLICY_KEYS)


def validate(name: str, section: Mapping[str, Any]) -> Any:
    """``read_settings`` that raises the problems it finds."""
    errors: list[ConfigError] = []
    settings = read_settings(name, section, errors)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return settings


def build_provider(name: str, section: Mapping[str, Any], client: httpx.AsyncClient) -> Provider:
    """Provider ``name`` of type ``section["type"]``, with the daemon's HTTP ``client``."""
    cls = provider_class(section.get("type"), f"providers.{name}.type")
    return cls(name, validate(name, section), client)
