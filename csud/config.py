"""Configuration: a TOML file read through pydantic-settings, overridden by ``CSUD_`` variables.

What belongs here: the schema (every key of config/csud.example.toml), cross-field rules (a
camera's commune exists, retention within the legal maximum, unique ids) and the one-line error
that ``csud check-config`` prints. Credentials are split out of camera URLs at load time, so no
model ever holds a URL with a password in it; they stay in ``SecretStr`` fields.

Where the file is: ``--config PATH``, else ``$CSUD_CONFIG``, else ``/etc/csud/csud.toml``.
Environment overrides use ``__`` between levels: ``CSUD_STORAGE__ROOT=/srv/csud``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tomllib
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from csud.errors import ConfigError
from csud.store.layout import validate_path_component

DEFAULT_CONFIG_PATH = Path("/etc/csud/csud.toml")
CONFIG_ENV = "CSUD_CONFIG"
LEGAL_MAX_RETENTION_DAYS = 30  # CSI art. L252-5: "un mois" at most; a site may only lower it
DEFAULT_RTSP_PORT = 554
_SECRET_QUERY_KEYS = frozenset(
    {"password", "pass", "passwd", "pwd", "psw", "user", "username", "token", "auth"}
)


# The file's scalars are taken as written: `enabled = "yes"` or `retention_days = "7"` is an
# error, not a guess. (CSUD_ environment variables are strings by nature: _LaxEnv converts them
# to the field's type first, so CSUD_STORAGE__SEGMENT_SECONDS=30 still works.)
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Strict):
    # IANA time zone of the site ("Europe/Paris"): every time the CLI prints carries its offset,
    # the registre's days are its days, manifests give times in it. "": the system's zone.
    timezone: str = ""

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        if value:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"not an IANA time zone name: {value!r} (e.g. Europe/Paris)") from None
        return value

    def zone(self) -> tuple[tzinfo, str]:
        """The zone and its name: the configured one, else the system's (:func:`system_zone`)."""
        if self.timezone:
            from zoneinfo import ZoneInfo

            return ZoneInfo(self.timezone), self.timezone
        return system_zone()


def system_zone() -> tuple[tzinfo, str]:
    """The system's zone and its name: ``$TZ``, else ``/etc/localtime``'s IANA name, else the C
    library's abbreviation (then the offsets are still right, only the name is vague)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    candidates = []
    if os.environ.get("TZ"):
        candidates.append(os.environ["TZ"].removeprefix(":"))
    with contextlib.suppress(OSError):
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            candidates.append(target.split(marker, 1)[1])
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(name), name
    here = datetime.now().astimezone().tzinfo
    assert here is not None
    return here, str(here.tzname(None) or "local")


class StorageConfig(_Strict):
    root: Path = Path("/var/lib/csud")
    segment_seconds: Int = Field(60, ge=2, le=3600)
    # Below this share of free space on the root's filesystem, the oldest unheld footage is
    # destroyed early (reason "disk_pressure"). 0 disables it.
    min_free_percent: Float = Field(5.0, ge=0, lt=100)
    # One memory budget for everything queued between the cameras' sockets and the disk; when
    # storage falls behind, cameras over their fair share drop whole GOPs. Default (unset): a
    # thirty-second of the machine's RAM, between 64 MiB and 1 GiB (csud.recording.budget).
    memory_budget_mb: Int | None = Field(None, ge=16)


class MetricsConfig(_Strict):
    listen: str = "127.0.0.1:9108"  # "" disables the endpoint

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108")
        return value


class LegalConfig(_Strict):
    max_retention_days: Int = Field(LEGAL_MAX_RETENTION_DAYS, ge=1, le=LEGAL_MAX_RETENTION_DAYS)


class NetworkConfig(_Strict):
    # Address the RTP/RTCP sockets of transport="udp" cameras bind to (the camera network's
    # interface; 0.0.0.0: all). Datagrams from any host but the camera's are dropped anyway.
    udp_bind: str = "0.0.0.0"

    @field_validator("udp_bind")
    @classmethod
    def _address(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        return value


class RetentionConfig(_Strict):
    interval_seconds: Int = Field(60, ge=1, le=86400)  # between two retention passes


class EvidenceConfig(_Strict):
    # Ed25519 private key (PEM, PKCS#8, from `csud keygen`) that signs extraction manifests.
    # None: extractions are not signed. Read by `csud extract` only, never by the daemon.
    signing_key: Path | None = None


class WebConfig(_Strict):
    """The operator-facing live-viewing server (csud.live.web); docs/live.md."""

    # "" (the default) disables it; the example config sets 127.0.0.1:8080. TLS required off loopback.
    listen: str = ""
    tls_cert: Path | None = None  # PEM
    tls_key: Path | None = None
    session_minutes: int = Field(480, ge=1, le=24 * 60)

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return MetricsConfig._host_port(value)

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> WebConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: give both tls_cert and tls_key, or neither")
        if self.listen and self.tls_cert is None and not self.loopback:
            raise ValueError(
                f"listen: {self.listen} is not a loopback address: set tls_cert and tls_key "
                "(operators' passwords and the images must not cross the network in clear)"
            )
        return self

    @property
    def loopback(self) -> bool:
        import ipaddress

        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class ClusterConfig(_Strict):
    """``[cluster]``: several nodes on etcd (csud.cluster, docs/cluster.md). Absent: one node."""

    etcd: list[str] = Field(min_length=1)
    node: str
    listen: str = "127.0.0.1:9120"  # node API (csud.cluster.api), HMAC of the shared secret
    advertise: str = "http://127.0.0.1:9120"
    secret_file: Path = Path("/etc/csud/cluster.key")
    lease_seconds: int = Field(10, ge=2, le=300)
    capacity: int = Field(300, ge=0)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return validate_path_component("node", value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9120")
        return value

    def read_secret(self) -> bytes:
        """The shared secret of the node API; :class:`ConfigError` if unreadable or short."""
        try:
            secret = self.secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cluster.secret_file: cannot read {self.secret_file}: {exc.strerror}"
            ) from None
        if len(secret) < 16:
            raise ConfigError(f"cluster.secret_file: {self.secret_file} holds under 16 bytes")
        return secret


class CommuneConfig(_Strict):
    id: str
    name: str
    service: Literal["live", "storage"]
    retention_days: Int = Field(gt=0)
    authorisation: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        validate_path_component("commune", value)
        return value


class CameraConfig(_Strict):
    id: str
    commune: str
    url: str
    name: str = ""
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    retention_days: Int | None = Field(None, gt=0)
    stall_seconds: Float = Field(10.0, gt=0, le=300)
    enabled: Bool = True
    # The file this camera was read from, for error lines raised after loading (password_file).
    # Only the path: equal cameras of two loads of the same file stay equal (reload diffs them).
    _source: str = PrivateAttr("")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        validate_path_component("camera", value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _split_userinfo(cls, data: Any) -> Any:
        """Move ``user:pass@`` out of the URL into username/password before anything stores it."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        url = data["url"]
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("url: malformed URL") from None
        if parts.scheme.lower() != "rtsp":
            raise ValueError(f"url: must be an rtsp:// URL, not {parts.scheme or 'a scheme-less'!r} one")
        if not parts.hostname:
            raise ValueError("url: no host in the URL")
        if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
            # rtsp://user:pa/ss@host: the unencoded "/" ends the host part, so "user:pa" would
            # be taken for host:port and the password would be printed as part of the URL.
            raise ValueError(
                "url: '@' after the host part: percent-encode special characters of the "
                "password ('/' as %2F, '@' as %40), or use username and password_file"
            )
        if parts.username is None and parts.password is None:
            return data
        if data.get("username") is not None or data.get("password") is not None:
            raise ValueError("url: credentials both in the URL and in username/password")
        data = dict(data)
        data["username"] = unquote(parts.username or "")
        if parts.password is not None:
            data["password"] = unquote(parts.password)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        data["url"] = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        return data

    @model_validator(mode="after")
    def _one_password_source(self) -> CameraConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password: give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            which = "password" if self.password is not None else "password_file"
            raise ValueError(f"{which}: given without username (the password would be ignored)")
        return self

    @property
    def display_url(self) -> str:
        """The URL as logs, errors and check-config show it: query values that look like
        credentials (some cameras take ``?user=...&password=...``) are masked."""
        parts = urlsplit(self.url)
        if not parts.query:
            return self.url
        masked = "&".join(
            f"{key}=***" if key.lower() in _SECRET_QUERY_KEYS and sep else f"{key}{sep}{value}"
            for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
        )
        return urlunsplit(parts._replace(query=masked))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or DEFAULT_RTSP_PORT

    def resolve_password(self) -> str | None:
        """The camera's password, read from ``password_file`` when set.

        A relative ``password_file`` is looked up in ``$CREDENTIALS_DIRECTORY`` (systemd's
        ``LoadCredential=``), so the unit can hand the secret over without a readable file.
        """
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        path = self.password_file
        if not path.is_absolute() and os.environ.get("CREDENTIALS_DIRECTORY"):
            path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / path
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            where = f"{self._source}: " if self._source else ""
            raise ConfigError(
                f"{where}cameras[{self.id}].password_file: cannot read {path}: {exc.strerror}"
            ) from None


class Settings(BaseSettings):
    """The whole configuration. Built by :func:`load_config`; never read a file elsewhere."""

    model_config = SettingsConfigDict(
        env_prefix="CSUD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    site: SiteConfig = SiteConfig()
    storage: StorageConfig = StorageConfig()
    metrics: MetricsConfig = MetricsConfig()
    legal: LegalConfig = LegalConfig()
    retention: RetentionConfig = RetentionConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    network: NetworkConfig = NetworkConfig()
    web: WebConfig = WebConfig()
    cluster: ClusterConfig | None = None
    communes: list[CommuneConfig] = []
    cameras: list[CameraConfig] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; CSUD_ variables must win over it.
        return (_LaxEnv(env_settings), init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        communes: dict[str, CommuneConfig] = {}
        for i, commune in enumerate(self.communes):
            if commune.id in communes:
                raise _FieldError(f"communes[{i}].id", f"duplicate commune id {commune.id!r}")
            if commune.retention_days > self.legal.max_retention_days:
                raise _FieldError(
                    f"communes[{i}].retention_days",
                    f"{commune.retention_days} days exceeds the legal maximum of "
                    f"{self.legal.max_retention_days} (legal.max_retention_days)",
                )
            communes[commune.id] = commune
        seen: set[str] = set()
        for i, camera in enumerate(self.cameras):
            if camera.id in seen:
                raise _FieldError(f"cameras[{i}].id", f"duplicate camera id {camera.id!r}")
            seen.add(camera.id)
            owner = communes.get(camera.commune)
            if owner is None:
                raise _FieldError(f"cameras[{i}].commune", f"unknown commune {camera.commune!r}")
            if camera.retention_days is not None and camera.retention_days > owner.retention_days:
                raise _FieldError(
                    f"cameras[{i}].retention_days",
                    f"{camera.retention_days} days is longer than commune {owner.id!r}'s "
                    f"{owner.retention_days}: a camera may only shorten its commune's window",
                )
        return self

    def commune(self, commune_id: str) -> CommuneConfig:
        for commune in self.communes:
            if commune.id == commune_id:
                return commune
        raise KeyError(commune_id)

    def camera(self, camera_id: str) -> CameraConfig:
        for camera in self.cameras:
            if camera.id == camera_id:
                return camera
        raise KeyError(camera_id)


class _LaxEnv(PydanticBaseSettingsSource):
    """The environment source, its strings converted to the field's int, float or bool first
    (``"30"`` -> 30, ``"true"`` -> True), so that strict fields accept CSUD_ overrides."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)  # pragma: no cover - __call__ is used

    def __call__(self) -> dict[str, Any]:
        return _coerce(self.settings_cls, self.inner())


def _scalar(annotation: Any) -> type | None:
    """int, float or bool when ``annotation`` is one of them (possibly Annotated or Optional)."""
    if get_origin(annotation) is Annotated:
        return _scalar(get_args(annotation)[0])
    if annotation in (int, float, bool):
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    return _scalar(args[0]) if len(args) == 1 else None


def _coerce(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name, value in values.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        annotation = field.annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = _coerce(annotation, value)
        elif isinstance(value, str) and (kind := _scalar(annotation)) is not None:
            # Left as is when it does not parse: the strict field refuses it with the usual message.
            with contextlib.suppress(ValidationError):
                out[name] = TypeAdapter(kind).validate_python(value)
    return out


class _FieldError(ValueError):
    """A cross-field rule broke; carries the dotted field to name in the error line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    settings: Settings
    path: Path
    sha256: str  # of the file's bytes, journaled so an auditor can tell which config ran


def config_path(explicit: str | Path | None) -> Path:
    """``--config`` if given, else ``$CSUD_CONFIG``, else ``/etc/csud/csud.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(explicit: str | Path | None = None) -> LoadedConfig:
    """Read, parse and validate the configuration; raise :class:`ConfigError` with one line."""
    path = config_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return LoadedConfig(
        settings=parse_settings(data, source=str(path)), path=path, sha256=hashlib.sha256(raw).hexdigest()
    )


def parse_settings(data: dict[str, Any], source: str = "config") -> Settings:
    """Validate ``data`` (the file's tables) under the environment's overrides. Every error is one
    line, ``SOURCE: FIELD: MESSAGE``, including those raised later by ``resolve_password``."""
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, data)}") from None
    except _FieldError as exc:  # raised from the after-validator outside pydantic's wrapping
        raise ConfigError(f"{source}: {exc}") from None
    for camera in settings.cameras:
        camera._source = source
    return settings


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    """First error as ``field.path: message``; never echoes the input value (it may be a secret)."""
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = [part for part in err["loc"] if not str(part).startswith("function-")]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if isinstance(err.get("ctx", {}).get("error"), _FieldError):
        return str(err["ctx"]["error"])
    field = _dotted(loc)
    if msg.startswith(("url:", "password:", "password_file:")) and loc:
        # A before/after model validator names its own field; point at it.
        name, _, msg = msg.partition(": ")
        field = f"{field}.{name}" if field else name
    return f"{field}: {msg}" if field else msg


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def retention_days(settings: Settings, camera: CameraConfig) -> int:
    """The window that applies to one camera: its own when shorter, else its commune's."""
    commune_days = settings.commune(camera.commune).retention_days
    return min(commune_days, camera.retention_days or commune_days)
