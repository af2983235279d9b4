"""The `inzwa` command: models, run, ctl, keys, serve, health, talk and certs."""

from __future__ import annotations

import argparse
import sys

# typing.TYPE_CHECKING without importing typing (~3 ms of each health probe); mypy reads this
# name as true wherever it comes from.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from common.settings import Settings

PROGRAM_HELP = "one of: orchestrator, asr_worker, llm_worker, tts_worker, gateway, all"


def get_settings() -> Settings:
    """The settings, imported on first use: `inzwa health` runs every few seconds in every
    container and must not pay for pydantic (nor asyncio, imported where used)."""
    from common.settings import get_settings as settings

    return settings()


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
    import asyncio
    import json

    settings = get_settings()
    scheme = "wss" if settings.tls_certfile else "ws"
    url = args.url or f"{scheme}://{settings.host}:{settings.port}/ws/audio"
    if args.mic:
        return _talk_mic(url, args)
    if not args.file:
        print("inzwa talk: give a WAV file, or --mic to talk through the microphone", file=sys.stderr)
        return 2
    from gateway.client import talk

    result = asyncio.run(
        talk(args.file, url, out=args.out, language=args.language, timeout_s=args.timeout)
    )
    print(json.dumps(result.summary(), ensure_ascii=False))
    return 0 if result.completed and not result.errors else 1


def _talk_mic(url: str, args: argparse.Namespace) -> int:
    import asyncio

    from deploy.mic import MicUnavailable, talk_mic

    try:
        return asyncio.run(talk_mic(url, language=args.language, barge_in=args.barge_in))
    except MicUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deploy.certs import instructions, make_certificate

    try:
        files = make_certificate(Path(args.out_dir), extra_names=args.name or [], days=args.days,
                                 force=args.force)
    except (FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(instructions(files, get_settings().port))
    return 0


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


def _serve(args: argparse.Namespace) -> int:
    from deploy.compose.process import serve

    serve(args.program)
    return 0


def _health(args: argparse.Namespace) -> int:
    from deploy.compose import probe  # the standard library only: what `inzwa serve` recorded

    status = probe.health(args.program)
    if status is not None:
        return status
    from deploy.compose.process import health  # nothing recorded: the settings resolve it

    return health(args.program)


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

    serve = commands.add_parser("serve", help="run one program in this process (a container's command)")
    serve.add_argument("program", choices=PROGRAM_HELP.removeprefix("one of: ").split(", ")[:-1])
    serve.set_defaults(func=_serve)

    health = commands.add_parser("health", help="probe the program `inzwa serve` runs here (exit 0: serving)")
    health.add_argument("program", nargs="?", default="", help="default: the one started here")
    health.set_defaults(func=_health)

    talk = commands.add_parser("talk", help="speak a WAV file (or the microphone: --mic) to the assistant")
    talk.add_argument("file", nargs="?", default="")
    talk.add_argument("--mic", action="store_true",
                      help="talk through the default microphone and speaker (the `mic` extra, PortAudio)")
    talk.add_argument("--barge-in", action="store_true",
                      help="with --mic: keep the microphone open while the reply plays (headphones)")
    talk.add_argument("--url", default="")
    talk.add_argument("--out", default=None, help="write the reply audio to this WAV")
    talk.add_argument("--language", default="")
    talk.add_argument("--timeout", type=float, default=60.0)
    talk.set_defaults(func=_talk)

    certs = commands.add_parser("certs", help="make a self-signed TLS pair to try the page on the LAN")
    certs.add_argument("--out-dir", default=".tls", help="where to write inzwa-cert.pem and inzwa-key.pem")
    certs.add_argument("--name", action="append", help="another host name or IP for the certificate")
    certs.add_argument("--days", type=int, default=90)
    certs.add_argument("--force", action="store_true", help="replace an existing pair")
    certs.set_defaults(func=_certs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["health"] and len(argv) <= 2 and not any(a.startswith("-") for a in argv):
        # Docker's health check, every few seconds: building the parser costs more than it.
        return _health(argparse.Namespace(program=argv[1] if len(argv) == 2 else ""))
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
