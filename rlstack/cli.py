"""Command line: `rlstack run`, `rlstack submit`, `rlstack verify`, `rlstack serve-rm`.

    rlstack run [CONFIG] [--run-dir DIR] [dotted.key=value ...]
    rlstack run --resume RUN_DIR [ray.address=... and other keys that do not change results]
    rlstack submit CONFIG --address http://127.0.0.1:8265 [--run-dir DIR] [key=value ...]
    rlstack submit --resume RUN_DIR --address http://127.0.0.1:8265 [key=value ...]
    rlstack verify VERIFIER DATA.jsonl [--json] [--timeout S] [--workers N] [--arg k=v ...]
    rlstack serve-rm CHECKPOINT [--host 127.0.0.1] [--port 8000] [--batch-size N] [--threads N]

Without CONFIG, `run` uses the embedded default (configs/smoke.yaml: generated data, a tiny
model, all five stages). Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlstack.errors import user_error

logger = logging.getLogger("rlstack")


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("RLSTACK_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # A record marked run_log_only goes to RUN_DIR/run.log only: the console gets the same
    # words once, as the last line (how a stopped run resumes).
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.addFilter(lambda record: not getattr(record, "run_log_only", False))


def _run(args: argparse.Namespace) -> int:
    from rlstack.config import load_config
    from rlstack.runtime import apply_env

    if args.resume is not None:
        return _resume(args)
    cfg = load_config(args.config, args.overrides)
    joins_cluster = cfg.ray.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    apply_env(loopback=cfg.ray.loopback and not joins_cluster)

    from rlstack.driver import run_pipeline

    run_dir = run_pipeline(cfg, args.run_dir)
    print(f"run directory: {run_dir}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    """`run --resume RUN_DIR`: the config comes from the run directory."""
    from rlstack.errors import ConfigError
    from rlstack.runtime import apply_env

    if not args.resume.strip():
        raise ConfigError("--resume: give the run directory to continue")
    if args.config is not None or args.run_dir is not None:
        given = "a config file" if args.config is not None else "--run-dir"
        raise ConfigError(
            f"--resume: {given} cannot be given; a resumed run uses RUN_DIR/config.yaml"
        )
    from rlstack.resume import resume_config

    cfg = resume_config(args.resume, args.overrides)
    joins_cluster = cfg.ray.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    apply_env(loopback=cfg.ray.loopback and not joins_cluster)

    from rlstack.driver import resume_pipeline

    run_dir = resume_pipeline(args.resume, args.overrides)
    print(f"run directory: {run_dir}")
    return 0


def _serve_rm(args: argparse.Namespace) -> int:
    from rlstack.errors import ConfigError
    from rlstack.reward_server import serve

    if args.overrides:
        raise ConfigError(f"serve-rm: unexpected arguments: {' '.join(args.overrides)}")

    serve(args.checkpoint, args.host, args.port, args.batch_size, args.threads)
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the configured stages on this machine or cluster")
    run.add_argument("config", nargs="?", default=None, help="YAML config (default: embedded)")
    run.add_argument("--run-dir", default=None, help="output directory (default: runs/<time>)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a stopped run from its newest saved state, with its own config",
    )
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    run.set_defaults(func=_run)

    from rlstack.submit import add_submit_arguments, run_submit

    submit = sub.add_parser("submit", help="run a config as a Ray job on a running cluster")
    add_submit_arguments(submit)
    submit.set_defaults(func=run_submit)

    from rlstack.verify import add_verify_arguments, run_verify

    verify = sub.add_parser("verify", help="score a JSONL data set with a verifier and report")
    add_verify_arguments(verify)
    verify.set_defaults(func=run_verify)

    serve_rm = sub.add_parser("serve-rm", help="serve a reward-model checkpoint over HTTP")
    serve_rm.add_argument("checkpoint", help="a directory the reward_model stage wrote")
    serve_rm.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    serve_rm.add_argument(
        "--port", type=_port, default=8000, help="TCP port, 0: any free one (default: %(default)s)"
    )
    serve_rm.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="sequences per forward pass (default: %(default)s)",
    )
    serve_rm.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: %(default)s)"
    )
    serve_rm.set_defaults(func=_serve_rm, overrides=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come before or after options: `run CONFIG --run-dir D a.b=1`.
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    args.overrides = [*args.overrides, *extra]
    # `run key=value` has no config file, nor has a resume (`--resume DIR key[=value]`): the
    # first override lands in CONFIG's place.
    config = getattr(args, "config", None)
    if (
        config
        and not config.endswith((".yaml", ".yml"))
        and ("=" in config or getattr(args, "resume", None) is not None)
    ):
        args.overrides = [args.config, *args.overrides]
        args.config = None
    _setup_logging()
    try:
        return args.func(args)
    except KeyboardInterrupt as err:
        print("rlstack: interrupted", file=sys.stderr)
        for note in getattr(err, "__notes__", []):  # where the run stopped, how to resume
            print(note, file=sys.stderr)
        return 130
    except Exception as err:
        user = user_error(err)
        if user is None:
            raise
        print(f"rlstack: error: {user}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
