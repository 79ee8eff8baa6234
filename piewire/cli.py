"""The ``piewire`` command: serve, manage keys, mint tokens."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from piewire import __version__
from piewire.errors import PiewireError
from piewire.settings import SETTINGS, Settings, env_name, flag_name, load_settings
from piewire.store.keys import ApiKey

# Settings that the key and token commands need to find the key store.
STORE_SETTINGS = ("data_dir", "cluster_id", "redis_url", "redis_prefix")


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    defaults = Settings()
    for f in SETTINGS:
        if f.name not in names:
            continue
        default = getattr(defaults, f.name)
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {env_name(f.name)}; default {default})",
        )


def _settings(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    return load_settings({name: getattr(args, name, None) for name in names})


def _add_policy(parser: argparse.ArgumentParser) -> None:
    onoff = argparse.BooleanOptionalAction
    parser.add_argument(
        "--client-publish",
        action=onoff,
        default=None,
        help="clients may publish into channels (PieSocket's C2C); default on",
    )
    parser.add_argument(
        "--force-auth",
        action=onoff,
        default=None,
        help="every channel of this key needs a JWT; default off",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        default=None,
        metavar="HOST",
        help="allowed Origin host, exact or *.domain; repeat; default any",
    )
    parser.add_argument(
        "--strict-origin",
        action=onoff,
        default=None,
        help="refuse connections that send no Origin header; default off",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="most open connections for this key, 0 for no limit",
    )


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in ("client_publish", "force_auth", "strict_origin", "max_connections"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.allowed_origins is not None:
        changes["allowed_origins"] = tuple(
            origin for origin in args.allowed_origins if origin
        )
    if changes.get("max_connections", 0) < 0:
        raise PiewireError("--max-connections must be 0 or more")
    return changes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piewire",
        description="WebSocket channels server, wire-compatible with PieSocket v3.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    _add_settings(serve, [f.name for f in SETTINGS])

    keys = commands.add_parser("keys", help="create, list, show, update, revoke keys")
    actions = keys.add_subparsers(dest="action", required=True)
    for action, helptext in (
        ("create", "create a key"),
        ("list", "list every key"),
        ("show", "show one key"),
        ("update", "change a key's policy"),
        ("revoke", "revoke a key: open connections are closed"),
    ):
        sub = actions.add_parser(action, help=helptext)
        _add_settings(sub, STORE_SETTINGS)
        sub.add_argument("--json", action="store_true", help="print JSON")
        if action in ("show", "update", "revoke"):
            sub.add_argument("api_key", help="the API key")
        if action == "create":
            sub.add_argument("--name", default="", help="a label for the key")
        if action in ("create", "update"):
            _add_policy(sub)

    token = commands.add_parser("token", help="mint a channel JWT for a key")
    _add_settings(token, STORE_SETTINGS)
    token.add_argument("channel", help="the full channel id, prefix included")
    token.add_argument("--key", required=True, help="the API key whose secret signs")
    token.add_argument("--user", default=None, help="the member identity (user claim)")
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds until expiry (default 3600)"
    )
    return parser


def _key_record(settings: Settings, key: ApiKey) -> dict[str, Any]:
    return {"cluster_id": settings.cluster_id, **key.to_json()}


def _print_keys(settings: Settings, keys: list[ApiKey], as_json: bool) -> None:
    records = [_key_record(settings, key) for key in keys]
    if as_json:
        print(json.dumps(records if len(records) != 1 else records[0], indent=2))
        return
    for record in records:
        print("\n".join(f"{name}: {value}" for name, value in record.items()))
        print()


def _keys(args: argparse.Namespace) -> int:
    from piewire.server import open_key_store

    settings = _settings(args, STORE_SETTINGS)
    store = open_key_store(settings)
    try:
        if args.action == "list":
            records = [_key_record(settings, key) for key in store.all()]
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                for r in records:
                    state = "revoked" if r["revoked"] else "active"
                    print(f"{r['api_key']}  {state:8} {r['name']}")
            return 0
        if args.action == "create":
            key = ApiKey.generate(name=args.name, **_policy(args))
            store.create(key)
            _print_keys(settings, [key], args.json)
            return 0
        found = store.get(args.api_key)
        if found is None:
            print(f"piewire: no key {args.api_key!r}", file=sys.stderr)
            return 1
        if args.action == "update":
            found = found.with_policy(**_policy(args))
            store.put(found)
        elif args.action == "revoke":
            found = found.with_policy(revoked=True)
            store.put(found)
        _print_keys(settings, [found], args.json)
        return 0
    finally:
        store.close()


def _token(args: argparse.Namespace) -> int:
    from piewire.core.channels import channel_id_error
    from piewire.core.tokens import mint_token
    from piewire.server import open_key_store

    error = channel_id_error(args.channel)
    if error is not None:
        print(f"piewire: {error}", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("piewire: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    settings = _settings(args, STORE_SETTINGS)
    store = open_key_store(settings)
    try:
        key = store.get(args.key)
    finally:
        store.close()
    if key is None or key.revoked:
        print(f"piewire: no active key {args.key!r}", file=sys.stderr)
        return 1
    print(mint_token(key.api_secret, args.channel, user=args.user, ttl=args.ttl))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from piewire.server import run

            return run(_settings(args, [f.name for f in SETTINGS]))
        if args.command == "keys":
            return _keys(args)
        return _token(args)
    except PiewireError as exc:
        print(f"piewire: {exc}", file=sys.stderr)
        return 2
