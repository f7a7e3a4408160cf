"""The relay's settings: one validated pydantic model, filled from the command line.

How this works: `RelaySettings` holds every setting with a default, as the flags spell them
(`--ports 30000-30999` is `ports="30000-30999"`). Validation runs once; `load_settings` turns a
pydantic `ValidationError` into a `ConfigError` whose message names each bad field
(`ports: range 30001-30001 holds no even/odd pair`) so the CLI can print it and exit 2 before
anything binds. Parsed forms are properties (`control_addr`, `port_range`). `control_fd` names an
inherited, already bound UDP socket that replaces `control` (a parent process that binds it first
has no port race with its child); giving both is an error.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """Invalid settings; the message names every offending field."""


def parse_hostport(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [v6addr]:port, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r}")
    return host, int(port_text)


def check_ip(value: str | None) -> str | None:
    """An IP literal (or None); the B2BUA validates its embedded relay's settings with this too."""
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


def check_port_range(value: str) -> str:
    """`LOW-HIGH` within 1024-65535 holding at least one even/odd RTP/RTCP pair."""
    low_text, dash, high_text = value.partition("-")
    if not dash or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise ValueError(f"expected LOW-HIGH, got {value!r}")
    low, high = int(low_text), int(high_text)
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"range {low}-{high} must lie within 1024-65535, low first")
    even_low = low + (low % 2)
    if even_low + 1 > high:
        raise ValueError(f"range {low}-{high} holds no even/odd pair")
    return value


class RelaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    control: str = "127.0.0.1:2223"
    control_fd: int | None = Field(None, ge=0)  # an inherited bound UDP socket; replaces `control`
    exit_with_parent: bool = False  # SIGTERM ourselves when the parent process exits
    address: str = "127.0.0.1"
    advertised_address: str | None = None
    ports: str = "30000-39999"
    http: str | None = None
    media_timeout: float = Field(60.0, gt=0)
    hold_timeout: float = Field(3600.0, ge=0)
    timeout_delete: float = Field(60.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("control", "http")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value)
        return value

    @field_validator("address", "advertised_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return check_ip(value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        return check_port_range(value)

    @model_validator(mode="after")
    def _control_source(self) -> RelaySettings:
        if self.control_fd is not None and "control" in self.model_fields_set:
            raise ValueError("control and control_fd are exclusive: the inherited socket is already bound")
        return self

    @model_validator(mode="after")
    def _advertise(self) -> RelaySettings:
        if ipaddress.ip_address(self.address).is_unspecified and self.advertised_address is None:
            raise ValueError("advertised_address is required when address is a wildcard")
        return self

    @property
    def control_addr(self) -> tuple[str, int]:
        return parse_hostport(self.control)

    @property
    def http_addr(self) -> tuple[str, int] | None:
        return parse_hostport(self.http) if self.http else None

    @property
    def port_range(self) -> tuple[int, int]:
        low, _, high = self.ports.partition("-")
        return int(low), int(high)

    @property
    def sdp_address(self) -> str:
        return self.advertised_address or self.address


def load_settings(values: dict[str, Any]) -> RelaySettings:
    try:
        return RelaySettings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
