"""The plan of an upgrade: what ``start`` decided before acting, recorded in ``run.created``.

Pure: a frozen value with a schema version, written to the ledger by :meth:`Plan.to_payload`
and read back by :meth:`Plan.from_payload`, which replay calls on every run it folds. The run
id is not part of it: ``start`` mints the id and records it beside the plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The plan's schema. A payload without ``plan_version`` was written before the field existed
#: and has exactly the shape of version 1; version 1 has no release side.
PLAN_VERSION = 3  # 2: the release side (``release``); 3: the cluster a restore rewinds


#: Where this checkout keeps statekeeper.toml and the migrations: recorded, not digested.
LOCAL_FIELDS = ("config", "migrations_dir")


class PlanError(ValueError):
    """A recorded plan lacks a field, or has one of the wrong type ("field 'x' is missing")."""


@dataclass(frozen=True)
class PlannedMigration:
    id: str
    checksum: str
    reversible: bool = False
    no_transaction: bool = False
    #: sha256 of the whole file when planned (what ``sha256sum`` prints); None in plans
    #: recorded before it was (the field is optional, the plan version did not change)
    file_sha256: str | None = None

    def to_payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"id": self.id, "checksum": self.checksum,
                             "reversible": self.reversible,
                             "no_transaction": self.no_transaction}
        if self.file_sha256 is not None:
            p["file_sha256"] = self.file_sha256
        return p


@dataclass(frozen=True)
class BackupPlan:
    enabled: bool
    method: str | None  # None when backups are off

    def to_payload(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "method": self.method}


@dataclass(frozen=True)
class ClusterPlan:
    """What a whole-cluster backup method's restore rewinds: the target's cluster (system
    identifier) and every database of it at planning time."""

    system_identifier: str
    databases: tuple[str, ...]

    @property
    def lease_key(self) -> str:
        """The key of the cluster-wide lease (a row of the lease table beside the target's)."""
        return f"cluster:{self.system_identifier}"

    def describe(self) -> str:
        return (f"this rollback restores the whole cluster {self.system_identifier}: "
                f"databases {', '.join(self.databases)}")

    def to_payload(self) -> dict[str, Any]:
        return {"system_identifier": self.system_identifier, "databases": list(self.databases)}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ClusterPlan:
        dbs = _get(p, "databases", list)
        if not all(isinstance(d, str) for d in dbs):
            raise PlanError("field 'databases' is not a list of text")
        return cls(_get(p, "system_identifier", str), tuple(dbs))


@dataclass(frozen=True)
class PlannedCommand:
    name: str
    run: str  # as written in statekeeper.toml: ${VAR} references, never their values
    undo: str

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "run": self.run, "undo": self.undo}


@dataclass(frozen=True)
class ReleasePlan:
    """The release side: where ``current`` pointed when the run was planned and where it will
    point, the configuration files, and the commands as written."""

    link: str
    from_target: str | None  # the link's target at planning time (None: no link yet)
    to_target: str
    to_dir: str
    config_files: tuple[str, ...] = ()
    config_from: str | None = None  # the directory the new files come from
    stop: str | None = None
    start: str | None = None
    commands: tuple[PlannedCommand, ...] = ()

    @property
    def from_release(self) -> str | None:
        return None if self.from_target is None else self.from_target.rstrip("/").rsplit(
            "/", 1)[-1]

    @property
    def to_release(self) -> str:
        return self.to_target.rstrip("/").rsplit("/", 1)[-1]

    def to_payload(self) -> dict[str, Any]:
        return {"link": self.link, "from_target": self.from_target, "to_target": self.to_target,
                "to_dir": self.to_dir, "config_files": list(self.config_files),
                "config_from": self.config_from, "stop": self.stop, "start": self.start,
                "commands": [c.to_payload() for c in self.commands]}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ReleasePlan:
        cmds = []
        for c in _get(p, "commands", list):
            if not isinstance(c, Mapping):
                raise PlanError("a planned deploy command is not an object")
            cmds.append(PlannedCommand(_get(c, "name", str), _get(c, "run", str),
                                       _get(c, "undo", str)))
        files = _get(p, "config_files", list)
        if not all(isinstance(f, str) for f in files):
            raise PlanError("field 'config_files' is not a list of text")
        return cls(
            link=_get(p, "link", str),
            from_target=_get(p, "from_target", (str, type(None))),
            to_target=_get(p, "to_target", str),
            to_dir=_get(p, "to_dir", str),
            config_files=tuple(files),
            config_from=_get(p, "config_from", (str, type(None))),
            stop=_get(p, "stop", (str, type(None))),
            start=_get(p, "start", (str, type(None))),
            commands=tuple(cmds),
        )


@dataclass(frozen=True)
class Plan:
    from_version: str
    to_version: str
    migrations: tuple[PlannedMigration, ...] = ()
    backup: BackupPlan = BackupPlan(False, None)
    health_checks: tuple[str, ...] = ()
    application: str = ""
    target: str = ""  # the target's display URL (password redacted): one run per target
    backend: str = ""
    migrations_dir: str = ""
    tool: str = ""
    config: str = ""
    #: human-readable outline of the steps, in order (``statekeeper plan`` prints it)
    outline: tuple[str, ...] = ()
    release: ReleasePlan | None = None
    #: the cluster a restore rewinds, for a whole-cluster backup method (None: the target only;
    #: absent from plans before version 3)
    cluster: ClusterPlan | None = None
    version: int = PLAN_VERSION

    @property
    def irreversible(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.migrations if not m.reversible)

    def shown(self, path: str) -> str:
        """A path as ``plan`` shows it: relative to the directory of statekeeper.toml when it
        is inside it."""
        import posixpath

        if not self.config.startswith("/"):
            return path
        base = posixpath.dirname(self.config)
        rel = posixpath.relpath(path, base) if path.startswith(base + "/") else path
        return rel

    def migration(self, migration_id: str) -> PlannedMigration | None:
        return next((m for m in self.migrations if m.id == migration_id), None)

    def to_payload(self) -> dict[str, Any]:
        """The plan as recorded in ``run.created`` (the run id goes beside it). ``irreversible``
        and ``steps`` are derived, and written for a reader of the raw ledger."""
        return {
            "plan_version": self.version,
            "application": self.application,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "target": self.target,
            "backend": self.backend,
            "migrations_dir": self.migrations_dir,
            "migrations": [m.to_payload() for m in self.migrations],
            "irreversible": list(self.irreversible),
            "backup": self.backup.to_payload(),
            "health_checks": list(self.health_checks),
            "steps": list(self.outline),
            "tool": self.tool,
            "config": self.config,
            "release": None if self.release is None else self.release.to_payload(),
            "cluster": None if self.cluster is None else self.cluster.to_payload(),
        }

    def digest(self) -> str:
        """sha256 of the plan's canonical JSON (sorted keys, no whitespace, UTF-8) without
        :data:`LOCAL_FIELDS`: what ``plan`` shows, ``start --plan`` and ``start
        --require-rehearsal`` compare. Any change to what the run would do changes it; where
        the project's checkout lives does not (a plan approved in CI, or rehearsed from another
        checkout of the same files, is the same plan)."""
        payload = {k: v for k, v in self.to_payload().items() if k not in LOCAL_FIELDS}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def changes_to(self, now: Plan) -> list[str]:
        """What differs between this plan (the one approved) and ``now``, one line each, the
        migrations by id; empty when the two plans are the same."""
        was, new = self.to_payload(), now.to_payload()
        lines: list[str] = []
        old_m = {m.id: m for m in self.migrations}
        new_m = {m.id: m for m in now.migrations}
        for mid in old_m.keys() - new_m.keys():
            lines.append(f"migration {mid} is no longer pending")
        for mid in new_m.keys() - old_m.keys():
            lines.append(f"migration {mid} is new")
        for mid in sorted(old_m.keys() & new_m.keys()):
            a, b = old_m[mid], new_m[mid]
            if a.checksum != b.checksum:
                lines.append(f"migration {mid}: its up part changed (sha256 {a.checksum[:12]} "
                             f"-> {b.checksum[:12]})")
            elif a != b:
                lines.append(f"migration {mid}: its file changed (down part or options)")
        if not lines and [m.id for m in self.migrations] != [m.id for m in now.migrations]:
            lines.append("the migrations run in another order")
        for key in sorted(was.keys() - {"migrations", "irreversible", "steps"}):
            if was.get(key) == new.get(key):
                continue
            if isinstance(was.get(key), dict) and isinstance(new.get(key), dict):
                for sub in sorted(was[key].keys() | new[key].keys()):
                    if was[key].get(sub) != new[key].get(sub):
                        lines.append(f"{key}.{sub}: {_brief(was[key].get(sub))} -> "
                                     f"{_brief(new[key].get(sub))}")
            else:
                lines.append(f"{key}: {_brief(was.get(key))} -> {_brief(new.get(key))}")
        if not lines and was != new:
            lines.append("the steps changed")
        return lines

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> Plan:
        """Read a recorded plan; :class:`PlanError` names the first field that is missing or
        of the wrong type among those the policy and the runner read."""
        version = _get(p, "plan_version", int, optional=True)
        if version is None:
            version = 1
        if version > PLAN_VERSION:
            raise PlanError(f"plan version {version} is newer than this statekeeper reads "
                            f"({PLAN_VERSION}): upgrade statekeeper")
        from_v = _get(p, "from_version", str, optional=True) or ""
        to_v = _get(p, "to_version", str, optional=True) or ""
        migrations = []
        for m in _get(p, "migrations", list, optional=True) or []:
            if not isinstance(m, Mapping):
                raise PlanError("a planned migration is not an object")
            migrations.append(PlannedMigration(
                _get(m, "id", str), _get(m, "checksum", str),
                bool(m.get("reversible")), bool(m.get("no_transaction")),
                _get(m, "file_sha256", str, optional=True)))
        backup = _get(p, "backup", Mapping)
        enabled = _get(backup, "enabled", bool, optional=True) is not False
        method = _get(backup, "method", str) if enabled else None
        checks = _get(p, "health_checks", list, optional=True) or []
        rel = _get(p, "release", (Mapping, type(None)), optional=True)
        cluster = _get(p, "cluster", (Mapping, type(None)), optional=True)
        return cls(
            from_version=from_v,
            to_version=to_v,
            migrations=tuple(migrations),
            backup=BackupPlan(enabled, method),
            health_checks=tuple(str(c) for c in checks),
            application=_text(p, "application"),
            target=_text(p, "target"),
            backend=_text(p, "backend"),
            migrations_dir=_text(p, "migrations_dir"),
            tool=_text(p, "tool"),
            config=_text(p, "config"),
            outline=tuple(str(s) for s in steps) if isinstance(steps := p.get("steps"), list)
            else (),
            release=None if rel is None else ReleasePlan.from_payload(rel),
            cluster=None if cluster is None else ClusterPlan.from_payload(cluster),
            version=version,
        )


def field_problem(p: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
                  optional: bool = False) -> str | None:
    """The one rule for a recorded field (plans, step arguments and results): None when it is
    there with its type, else "field 'x' is missing" / "... is not a str". A bool is not an
    int here."""
    if optional and key not in p:
        return None
    v = p.get(key)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        what = "missing" if key not in p else f"not a {getattr(kind, '__name__', kind)}"
        return f"field {key!r} is {what}"
    return None


def _get(p: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
         optional: bool = False) -> Any:
    problem = field_problem(p, key, kind, optional)
    if problem:
        raise PlanError(problem)
    return p.get(key)


def _brief(value: Any) -> str:
    text = "(none)" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(p: Mapping[str, Any], key: str) -> str:
    v = p.get(key)
    return v if isinstance(v, str) else ""
