"""Typed configuration: schema, presets and composition (see compose.py for the override grammar)."""

from archer.core.config.compose import Composed, compose, compose_dict, schema_keys, validate

__all__ = ["Composed", "compose", "compose_dict", "schema_keys", "validate"]
