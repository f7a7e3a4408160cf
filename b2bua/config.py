"""The daemon's configuration: one pydantic model, loaded from defaults, a file, env and flags.

How this works: `Settings` is the whole configuration with a default for every field, so the daemon
runs with no file at all (the embedded default: SIP on 127.0.0.1:5060, calls to a PBX on
127.0.0.1:5080). `load_settings` layers, lowest first: the defaults, a TOML or YAML file
(`--config`), environment variables `B2BUA_<SECTION>__<FIELD>` (e.g. `B2BUA_CALLS__NO_ANSWER_TIMEOUT_S=30`),
and command-line flags. Validation happens once, on the merged result, and a bad value raises
`ConfigError` whose message names the field (`calls.no_answer_timeout_s: ...`), before anything binds.
No other module reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from rtp_relay.config import check_ip, check_port_range

from .call.transfer_policy import TransferSettings
from .sip.address import Address
from .sip.uri import SipUri, UriError, parse_uri, split_hostport

ENV_PREFIX = "B2BUA_"


class ConfigError(Exception):
    """Invalid configuration; the message names every offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    try:
        host, port = split_hostport(text)
    except UriError as exc:
        raise ValueError(str(exc)) from None
    return (host[1:-1] if host.startswith("[") else host), port or default_port


def parse_next_hop(text: str) -> Address:
    """`host:port[;transport=tcp]` or a SIP URI `sip:host:port;transport=tcp`."""
    text = text.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except UriError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(uri, SipUri):
        raise ValueError("next hop must be host:port or a sip: URI")
    transport = uri.transport
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport {transport!r} not supported (udp or tcp)")
    return Address(transport, uri.host_bare, uri.port or 5060)


class SipSettings(_Section):
    listen: list[str] = Field(default=["127.0.0.1:5060"], min_length=1,
                              description="host:port pairs; each listens on UDP and TCP")
    transports: list[Literal["udp", "tcp"]] = ["udp", "tcp"]
    advertised_host: str | None = Field(
        default=None, description="host to put in Via/Contact instead of the listen address (e.g. behind NAT)")
    t1_ms: int = Field(500, ge=10, le=10_000)
    t2_ms: int = Field(4000, ge=100, le=60_000)
    t4_ms: int = Field(5000, ge=100, le=60_000)
    max_message_bytes: int = Field(65535, ge=1500, le=1_048_576)
    udp_receive_buffer_bytes: int = Field(
        4_194_304, ge=0, le=1_073_741_824,
        description="receive buffer asked for each UDP socket the daemon reads: SIP, media relay "
                    "control, the embedded relay's control (0: the kernel's default); capped by "
                    "net.core.rmem_max")
    tcp_idle_timeout_s: float = Field(300.0, gt=0)
    user_agent: str = "b2bua/0.1"

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_hostport(item)
        return v


class RouteRule(_Section):
    """Send calls whose Request-URI matches to `next_hop`; the first matching rule wins."""

    user_prefix: str | None = None
    domain: str | None = None
    next_hop: str
    # Calls this rule routes handle REFER this way (unset: `transfers.mode`), e.g. passthrough toward
    # a PBX whose phones transfer among themselves, terminate toward a carrier that knows no REFER.
    transfer_mode: Literal["terminate", "passthrough", "reject"] | None = None

    @field_validator("next_hop")
    @classmethod
    def _valid_hop(cls, v: str) -> str:
        parse_next_hop(v)
        return v

    @model_validator(mode="after")
    def _has_match(self) -> RouteRule:
        if self.user_prefix is None and self.domain is None:
            raise ValueError("a rule needs user_prefix or domain (use routing.next_hop as the default)")
        return self


class RoutingSettings(_Section):
    next_hop: str | None = Field("127.0.0.1:5080", description="default destination (e.g. the PBX)")
    rules: list[RouteRule] = []

    @field_validator("next_hop")
    @classmethod
    def _valid_hop(cls, v: str | None) -> str | None:
        if v is not None:
            parse_next_hop(v)
        return v


class CallSettings(_Section):
    no_answer_timeout_s: float = Field(120.0, gt=0, description="CANCEL the B leg after this long without an answer")
    max_calls: int = Field(20_000, ge=1, description="new INVITEs beyond this get 503")
    # Which headers of the A leg's INVITE are copied to the B leg (case-insensitive names; a name
    # ending in '*' is a prefix). Everything else that is end-to-end stays on its own leg.
    pass_headers: list[str] = ["P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Subject",
                               "Alert-Info", "Call-Info", "Diversion", "History-Info", "X-*"]


class HttpSettings(_Section):
    listen: str = Field("127.0.0.1:9090", description="host:port for /metrics and /healthz")

    @field_validator("listen")
    @classmethod
    def _valid(cls, v: str) -> str:
        parse_hostport(v, 9090)
        return v


class ApiSettings(_Section):
    """The HTTP JSON control API under /v1 on the `http.listen` address (see b2bua/api/)."""

    enabled: bool = Field(True, description="serve /v1 (calls, hold/resume, hang up, events)")
    token: SecretStr | None = Field(
        None, description="bearer token every /v1 request must carry; without one only loopback "
                          "clients are answered (env B2BUA_API__TOKEN)")
    max_body_bytes: int = Field(16_384, ge=256, le=1_048_576, description="larger request bodies get 413")
    sse_keepalive_s: float = Field(15.0, gt=0, le=300, description="comment line on idle event streams")
    sse_queue_events: int = Field(
        1000, ge=10, le=100_000, description="events buffered per stream client; one that falls this far "
                                             "behind is dropped (after a final overflow event)")
    sse_max_clients: int = Field(32, ge=1, le=10_000, description="concurrent /v1/events streams")
    transfer_method: Literal["rebridge", "refer"] = Field(
        "rebridge", description="how POST /v1/calls/{id}/transfer carries a transfer out when the request "
                                "names no method: rebridge inside the B2BUA, or REFER to the transferee")
    refer_fallback: bool = Field(True, description="a REFER answered 403/405/501 falls back to rebridge")
    refer_wait: Literal["attended", "unattended"] = Field(
        "attended", description="method refer: done on the final NOTIFY 2xx (attended) or on the 2xx to "
                                "the REFER (unattended), when the request does not say")

    @field_validator("token")
    @classmethod
    def _strong(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        # RFC 6750 §2.1 b64token characters, and long enough not to be guessed.
        if not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", v.get_secret_value()):
            raise ValueError("must be a bearer token (letters, digits and -._~+/ only)")
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v


class ShutdownSettings(_Section):
    drain_timeout_s: float = Field(30.0, ge=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class EmbeddedRelaySettings(_Section):
    """The relay the daemon starts as its own child process when `media.relays` is empty."""

    address: str = Field("127.0.0.1", description="IP the media sockets bind to")
    advertised_address: str | None = Field(
        None, description="IP written into SDP (required when `address` is a wildcard)")
    ports: str = Field("30000-39999", description="RTP/RTCP port range LOW-HIGH")
    hold_timeout_s: float = Field(3600.0, ge=0, description="media timeout for streams on hold; 0: never")

    # The same checks as the relay's own flags: a setting the daemon accepts never makes the child exit.
    @field_validator("address", "advertised_address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        return check_ip(v)

    @field_validator("ports")
    @classmethod
    def _range(cls, v: str) -> str:
        return check_port_range(v)

    @model_validator(mode="after")
    def _advertise(self) -> EmbeddedRelaySettings:
        if self.advertised_address is None and ipaddress.ip_address(self.address).is_unspecified:
            raise ValueError("advertised_address is required when address is a wildcard")
        return self


class MediaSettings(_Section):
    """How call media is anchored: through rtpengine-compatible relays spoken to over ng."""

    enabled: bool = Field(True, description="relay every call's RTP; false passes SDP end to end")
    relays: list[str] = Field(
        default=[], description="ng control addresses host:port of rtp_relay or rtpengine processes; "
                                "empty: start one embedded relay")
    embedded: EmbeddedRelaySettings = EmbeddedRelaySettings()
    instance_id: str = Field(
        "", max_length=64, pattern=r"^[A-Za-z0-9._:-]*$",
        description="names this daemon's sessions on shared relays (default b2bua-<listen host:port>); "
                    "at start, sessions left there by a previous run with the same id are deleted")
    timeout_s: float = Field(60.0, ge=0, description="end calls whose media stopped this long; 0: never")
    check_interval_s: float = Field(10.0, gt=0, description="how often each call's media is queried")
    ping_interval_s: float = Field(2.0, gt=0, description="how often each relay is pinged")
    ng_retransmit_ms: list[int] = Field(
        default=[500, 1000, 2000], min_length=1,
        description="ng request retransmission delays; a relay silent through all of them is down")

    @field_validator("relays")
    @classmethod
    def _valid_relays(cls, v: list[str]) -> list[str]:
        for item in v:
            host, port = parse_hostport(item, 2223)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"relay {item!r}: the host must be an IP address") from None
        return v

    @field_validator("ng_retransmit_ms")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v):
            raise ValueError("delays must be positive")
        return v


class Settings(_Section):
    sip: SipSettings = SipSettings()
    routing: RoutingSettings = RoutingSettings()
    calls: CallSettings = CallSettings()
    http: HttpSettings = HttpSettings()
    api: ApiSettings = ApiSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    media: MediaSettings = MediaSettings()
    transfers: TransferSettings = TransferSettings()
    log: LogSettings = LogSettings()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping of sections")
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """B2BUA_SECTION__FIELD=value -> {"section": {"field": value}}; nested sections take another
    `__` (B2BUA_MEDIA__EMBEDDED__PORTS); lists are comma-separated."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        model: Any = Settings
        target = out
        for depth, name in enumerate(path):
            fields = getattr(model, "model_fields", {})
            if name not in fields:
                where = ".".join(path[:depth + 1])
                raise ConfigError(f"{key}: unknown {'section' if depth == 0 else 'field'} {where}")
            ann = fields[name].annotation
            if depth == len(path) - 1:
                if hasattr(ann, "model_fields"):
                    raise ConfigError(f"{key}: {'.'.join(path)} is a section; name one of its fields")
                is_list = str(ann).startswith("list")
                target[name] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
            else:
                if not hasattr(ann, "model_fields"):
                    raise ConfigError(f"{key}: {'.'.join(path[:depth + 1])} is not a section")
                target = target.setdefault(name, {})
                model = ann
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_settings(path: str | None = None, environ: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = _read_file(Path(path)) if path else {}
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
