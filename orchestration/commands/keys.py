"""`avatarpipe keys create --role uploader|compliance|admin [--name N] [--json]`, `keys list`,
`keys revoke KEY_ID`: the HTTP service's API keys. A new key is printed once; only a keyed hash
of it is stored (service/keys.py)."""

from __future__ import annotations

import argparse
import json

from orchestration.settings import Settings, prepare_environment


def cmd_keys(args: argparse.Namespace) -> int:
    from service.keys import create_key
    from service.secrets_file import service_secret
    from storage.metadata_store import open_metadata_store

    settings = Settings.from_env()
    prepare_environment(settings)
    with open_metadata_store(settings.mongodb_uri, settings.metadata_dir) as metadata:
        if args.keys_command == "create":
            issued = create_key(
                metadata, service_secret(settings.home, settings.app.service_secret), args.role, args.name
            )
            answer = {
                "key_id": issued.key.key_id,
                "role": issued.key.role,
                "name": issued.key.name,
                "key": issued.secret,
            }
            print(
                json.dumps(answer)
                if args.json
                else f"{issued.secret}\n(key {issued.key.key_id}, role {issued.key.role}: shown once)"
            )
            return 0
        if args.keys_command == "list":
            rows = [{"key_id": d["_id"], "role": d["role"], "name": d.get("name"), "created_at": d["created_at"],
                     "revoked_at": d.get("revoked_at")} for d in metadata.list_api_keys()]  # fmt: skip
            print(json.dumps({"keys": rows}, default=str) if args.json else
                  "\n".join(f"{r['key_id']} {r['role']:<10} {r['name'] or ''} {'revoked' if r['revoked_at'] else 'active'}"
                            for r in rows) or "no keys")  # fmt: skip
            return 0
        revoked = metadata.revoke_api_key(args.key_id)
    if revoked is None:
        print(
            json.dumps({"error": {"code": "NOT_FOUND", "message": "no such key"}})
            if args.json
            else "no such key"
        )
        return 2
    print(json.dumps({"key_id": args.key_id, "revoked": True}) if args.json else f"revoked {args.key_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from service.keys import ROLES

    parser = sub.add_parser("keys", help="API keys of the HTTP service (create, list, revoke)")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", help="what the key is for (not secret)")
    listing = keys_sub.add_parser("list", help="every key, without secrets")
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    for p in (create, listing, revoke):
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_keys)
