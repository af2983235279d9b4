"""The `inzwa` command: models, run, ctl and talk."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from common.settings import get_settings

PROGRAM_HELP = "one of: orchestrator, asr_worker, llm_worker, tts_worker, gateway, all"


def _models(args: argparse.Namespace) -> int:
    from common.models import CATALOGUE, ChecksumError, fetch

    settings = get_settings()
    names = args.only or list(CATALOGUE)
    for name in names:
        if name not in CATALOGUE:
            print(f"unknown model {name!r}; known: {', '.join(CATALOGUE)}", file=sys.stderr)
            return 2
        try:
            path = fetch(CATALOGUE[name], settings.models_dir)
        except ChecksumError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


def _run(_: argparse.Namespace) -> int:
    from deploy.stack import run_foreground

    run_foreground(get_settings())
    return 0  # not reached: supervisord replaced this process


def _ctl(args: argparse.Namespace) -> int:
    from deploy.stack import ctl

    return ctl(get_settings(), [args.action, *args.programs])


def _talk(args: argparse.Namespace) -> int:
    from gateway.client import talk

    settings = get_settings()
    url = args.url or f"ws://{settings.host}:{settings.port}/ws/audio"
    result = asyncio.run(
        talk(args.file, url, out=args.out, language=args.language, timeout_s=args.timeout)
    )
    print(json.dumps(result.summary(), ensure_ascii=False))
    return 0 if result.completed and not result.errors else 1


def _keys(args: argparse.Namespace) -> int:
    """CURVE key pairs for the plane (INZWA_CURVE_KEYS_DIR): one per identity, kept if present."""
    from pathlib import Path

    from common.plane_auth import create_keys

    settings = get_settings()
    keys_dir = Path(args.dir) if args.dir else settings.curve_keys_dir
    if keys_dir is None:
        print("error: give --dir or set INZWA_CURVE_KEYS_DIR", file=sys.stderr)
        return 2
    gateways = args.gateway or [settings.gateway_id]
    for name in create_keys(keys_dir, gateways, args.worker or None):
        print(f"{name}: {keys_dir / name}.key")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inzwa", description="Inzwa voice assistant")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="manage the default models")
    models.add_argument("action", choices=["fetch"])
    models.add_argument("--only", action="append", help="fetch only this model (repeatable)")
    models.set_defaults(func=_models)

    run = commands.add_parser("run", help="start the five processes under supervisord")
    run.set_defaults(func=_run)

    ctl = commands.add_parser("ctl", help="control the running stack (supervisorctl)")
    ctl.add_argument("action", choices=["status", "restart", "start", "stop", "pid"])
    ctl.add_argument("programs", nargs="*", help=PROGRAM_HELP)
    ctl.set_defaults(func=_ctl)

    keys = commands.add_parser("keys", help="write CURVE keys for the ZeroMQ plane")
    keys.add_argument("--dir", default="", help="key directory (default: INZWA_CURVE_KEYS_DIR)")
    keys.add_argument("--gateway", action="append", help="a gateway_id (repeatable; default: ours)")
    keys.add_argument("--worker", action="append", help="worker identities (default: worker)")
    keys.set_defaults(func=_keys)

    talk = commands.add_parser("talk", help="speak a WAV file to the assistant")
    talk.add_argument("file")
    talk.add_argument("--url", default="")
    talk.add_argument("--out", default=None, help="write the reply audio to this WAV")
    talk.add_argument("--language", default="")
    talk.add_argument("--timeout", type=float, default=60.0)
    talk.set_defaults(func=_talk)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
