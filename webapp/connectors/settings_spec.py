"""Typed declarations of a connector's settings: what the admin form renders, what the
form, the CLI and the API validate with, and what a declarative connector file declares."""
from dataclasses import dataclass
from typing import Any

SETTING_TYPES = ("int", "float", "bool", "string", "url", "choice", "list", "json")


@dataclass(frozen=True)
class SettingSpec:
    name: str
    type: str = "string"  # one of SETTING_TYPES
    default: Any = None
    help: str = ""
    minimum: float | None = None  # int/float bounds, inclusive
    maximum: float | None = None
    choices: tuple = ()  # type "choice": the allowed values
    required: bool = False
    advanced: bool = False  # shown folded away on the form
    fault: bool = False  # a test-only fault-injection knob (sandbox), never beside real settings
