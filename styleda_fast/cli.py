"""The ``styleda-fast`` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["mine"]:
        return _mine(argv)
    if argv[:1] == ["gpu-report"]:  # its own options (see `styleda-fast gpu-report --help`)
        from styleda_fast.devtools.gpu_report import main as gpu_report

        return gpu_report(argv[1:])
    from styleda_fast.bench import DEFAULT_FAMILIES, FAMILIES

    parser = argparse.ArgumentParser(
        prog="styleda-fast",
        description="Benchmark the fused PODA/FAMix style operations, list the backends, mine or describe style banks.",
        epilog="Run 'styleda-fast COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench", help="time the fused operations against the public code, torch.compile and a copy of the input"
    )
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    bench.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small shapes, few calls, no torch.compile: a smoke test",
    )
    bench.add_argument("--full", action="store_true", help="also the slow general references and larger sizes")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    bench.add_argument(
        "--busy-neighbour",
        action="store_true",
        help="start a process that spins on one core for the whole run (small-tensor paths measured under load)",
    )
    bench.add_argument(
        "--family",
        action="append",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"only these families (repeatable): {', '.join(FAMILIES)}; default: {', '.join(DEFAULT_FAMILIES)}",
    )
    sub.add_parser("backends", help="which backends run on this machine")
    sub.add_parser(
        "gpu-report",
        add_help=False,
        help="compile the Triton kernels for sm_80/sm_90 (no GPU needed): registers, spills, occupancy, vector width",
    )
    sub.add_parser("mine", add_help=False, help="mine styles from a folder of images into a StyleBank")
    from styleda_fast.bank.info import add_arguments as add_bank_arguments

    add_bank_arguments(sub.add_parser("bank", help="describe a style bank: 'styleda-fast bank info FILE [--json]'"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        from styleda_fast.bench import run

        run(args.device, args.out, args.quick, not args.no_compile, args.family, full=args.full,
            busy_neighbour=args.busy_neighbour)  # fmt: skip
    elif args.command == "bank":
        from styleda_fast.bank.info import run as bank_run

        return bank_run(args)
    elif args.command == "backends":
        from styleda_fast.core.backend import backends

        for name, status in backends().items():
            print(f"{name:10} {'available' if status.available else 'unavailable':12} {status.detail}")
    return 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(signum)


def _mine(argv: list[str]) -> int:
    """``styleda-fast mine``: Ctrl-C and SIGTERM stop it without a traceback from its first statement on (exit
    status 128 + the signal; the finished chunks are kept); the previous handlers are restored on return."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from styleda_fast.mining.command import MineError, add_arguments, run
        from styleda_fast.mining.progress import printable

        parser = argparse.ArgumentParser(prog="styleda-fast mine")
        add_arguments(parser)
        args = parser.parse_args(argv[1:])
        try:
            return run(args, argv)
        except MineError as exc:
            print(f"styleda-fast mine: error: {printable(str(exc))}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as exc:  # before the run started: nothing to keep
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        print("styleda-fast mine: interrupted before mining started; nothing was written", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
