"""`avatarpipe keys create --role uploader|compliance|admin [--name N] [--json]`, `keys list`,
`keys revoke KEY_ID`: the HTTP service's API keys. A new key is printed once; only a keyed hash
of it is stored (service/keys.py)."""

from __future__ import annotations

import click

from orchestration.app import metadata_store
from orchestration.commands.common import Reply, answers, fail
from orchestration.settings import Settings

ROLES = ("uploader", "compliance", "admin")  # service.keys.ROLES (the CLI does not import the service)


@click.group("keys", help="API keys of the HTTP service (create, list, revoke)")
def keys() -> None:
    """The service's API keys."""


@keys.command("create", help="create a key (printed once)")
@click.option("--role", required=True, type=click.Choice(ROLES), help="what the key may do")
@click.option("--name", help="what the key is for (not secret)")
@answers(prepare=False)
def create(settings: Settings, role: str, name: str | None) -> Reply:
    from service.keys import create_key
    from service.secrets_file import service_secret

    with metadata_store(settings) as metadata:
        issued = create_key(metadata, service_secret(settings.home, settings.app.service_secret), role, name)
    answer = {"key_id": issued.key.key_id, "role": issued.key.role, "name": issued.key.name, "key": issued.secret}
    return Reply(0, answer, lambda a: f"{a['key']}\n(key {a['key_id']}, role {a['role']}: shown once)")


@keys.command("list", help="every key, without secrets")
@answers(prepare=False)
def list_keys(settings: Settings) -> Reply:
    with metadata_store(settings) as metadata:
        rows = [{"key_id": d["_id"], "role": d["role"], "name": d.get("name"), "created_at": d["created_at"],
                 "revoked_at": d.get("revoked_at")} for d in metadata.list_api_keys()]  # fmt: skip
    return Reply(0, {"keys": rows}, lambda a: "\n".join(
        f"{r['key_id']} {r['role']:<10} {r['name'] or ''} {'revoked' if r['revoked_at'] else 'active'}"
        for r in a["keys"]) or "no keys")  # fmt: skip


@keys.command("revoke", help="revoke a key at once")
@click.argument("key_id")
@answers(prepare=False)
def revoke(settings: Settings, key_id: str) -> Reply:
    with metadata_store(settings) as metadata:
        revoked = metadata.revoke_api_key(key_id)
    if revoked is None:
        return fail(2, f"avatarpipe: no key {key_id!r}")
    return Reply(0, {"key_id": key_id, "revoked": True}, lambda a: f"revoked {a['key_id']}")
