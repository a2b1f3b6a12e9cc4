"""The explicit list of provider types; each module is imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import ConfigError
from bridge.providers.base import Provider

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


def provider_class(type_name: str, path: str = "type") -> type[Provider]:
    """The class registered for ``type_name``; ``ConfigError`` at ``path`` if unknown."""
    target = PROVIDER_TYPES.get(type_name)
    if target is None:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ConfigError(path, f"unknown provider type {type_name!r} (known: {known})")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_provider(
    name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
) -> Provider:
    """Build provider ``name`` from its config section (validates it)."""
    type_name = settings.get("type")
    if not isinstance(type_name, str):
        raise ConfigError(f"providers.{name}.type", "required (a provider type name)")
    cls = provider_class(type_name, f"providers.{name}.type")
    return cls.from_config(name, settings, client)
